"""The notebook's thin entry point: one call per notebook step; all logic lives in ``vinted_classifier``.

import module as m
cfg = m.config(smoke=True)
labels = m.load_labels(cfg)
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from IPython import get_ipython
from IPython.display import Image

from vinted_classifier import data, eda  # noqa: F401  (eda: the notebook calls m.eda.*)
from vinted_classifier.client import (  # noqa: F401  (the serving part of the notebook)
    b64_request,
    check_served,
    pixels_request,
    query,
    request_sizes,
    sample_images,
    served_vs_local,
    start_server,
    stop_server,
)
from vinted_classifier.config import PROJECT_ROOT, RunConfig, load_config
from vinted_classifier.contract import DEFAULT_CATEGORY_COLUMN, LABELS_FILE, RunLabels
from vinted_classifier.demo import ensure_demo_dataset
from vinted_classifier.evaluate.tables import score_predictions_file, slices_table, summary_table  # noqa: F401
from vinted_classifier.evaluate.tables import tag_table as metrics_table  # noqa: F401
from vinted_classifier.model import build_model
from vinted_classifier.precision import detect_hardware, resolve_precision

# The notebook runner (tools/notebook.py) points this at a folder it deletes afterwards; else smoke runs use a temp dir.
WORKDIR_ENV = "VINTED_NOTEBOOK_WORKDIR"


def setup(level: int = logging.INFO) -> None:
    """Logging for the notebook; quiet TensorFlow's C++ start-up chatter; inline PNGs for matplotlib Figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if get_ipython() is not None:  # eda returns pyplot-free Figures: register their PNG formatter
        get_ipython().run_line_magic("matplotlib", "inline")


def environment() -> dict:
    """Which interpreter runs the notebook (the runner checks it is the project's venv)."""
    return {"python": platform.python_version(), "sys.prefix": sys.prefix, "executable": sys.executable}


def config(
    *,
    data_dir=None,
    backbone=None,
    image_size=None,
    epochs=None,
    finetune_epochs=None,
    run_name=None,
    smoke: bool = False,
    extra: list[str] | None = None,
) -> RunConfig:
    """The default run with the notebook's parameters. ``smoke=True`` stacks configs/smoke.yaml instead of
    image_size/epochs and moves runs, SavedModels and (without ``data_dir``) the demo data to a temp folder."""
    chosen = {"data.data_dir": data_dir, "model.backbone": backbone, "run_name": run_name}
    if not smoke:
        chosen.update({"train.head_epochs": epochs, "train.finetune_epochs": finetune_epochs})
        if image_size is not None:
            chosen.update({"model.image_height": image_size[0], "model.image_width": image_size[1]})
    overrides = [f"{key}={value}" for key, value in chosen.items() if value is not None] + list(extra or [])
    if not smoke:
        return load_config(None, overrides)
    workdir = Path(os.environ.get(WORKDIR_ENV) or tempfile.mkdtemp(prefix="vinted-notebook-smoke-"))
    overrides += [
        f"output_dir={workdir / 'runs'}",
        f"export.saved_model_dir={workdir / 'saved_model'}",
        f"release.staging_dir={workdir / 'staging'}",
    ]
    overrides += [f"data.data_dir={workdir / 'demo'}"] if data_dir is None else []
    return load_config(None, overrides, presets=["smoke"])


def config_yaml(cfg: RunConfig, *sections: str) -> str:
    """The resolved config (or only some sections, e.g. "model", "train") as YAML, for printing."""
    full = cfg.model_dump(mode="json")
    return yaml.safe_dump({k: full[k] for k in sections} if sections else full, sort_keys=False)


def ensure_demo_data(cfg: RunConfig, scale: float = 1.0, *, generate: bool = True) -> Path:
    return ensure_demo_dataset(cfg.data.data_dir, labels_file=cfg.data.labels_file, scale=scale, generate=generate)


def load_labels(cfg: RunConfig) -> pd.DataFrame:
    return data.read_labels(cfg.data)


def load_test_ids(cfg: RunConfig) -> pd.DataFrame:
    return data.read_test_ids(cfg.data)


def corrupted_copy_error(labels: pd.DataFrame, cfg: RunConfig) -> str:
    return data.corrupted_copy_error(labels, cfg.data)


def prepare(cfg: RunConfig) -> data.PreparedData:
    """Validate images, group duplicates, split (reusing the splits file), downsample."""
    return data.prepare(cfg.data, cfg.seed)


def split_table(prepared: data.PreparedData, category_column: str = DEFAULT_CATEGORY_COLUMN) -> pd.DataFrame:
    return data.split_table(prepared, category_column)


def downsample_effect(prepared: data.PreparedData, cfg: RunConfig, cap: int | None = None) -> pd.DataFrame:
    return data.downsample_effect(prepared, cfg.data, cfg.seed, cap)


def choose_precision(cfg: RunConfig) -> tuple[str, dict]:
    """The precision policy ``auto`` resolves to on this machine, and the hardware facts behind it."""
    hardware = detect_hardware()
    return resolve_precision(cfg.train.precision, hardware), hardware


def build(cfg: RunConfig, prepared: data.PreparedData):
    return build_model(
        cfg.model, list(prepared.vocab.categories), list(prepared.vocab.tags), category_output=cfg.data.category_column
    )


def plot_model(keras_model, path: str | Path):
    """Model diagram via pydot + Graphviz; a clear message instead of a crash when Graphviz is absent."""
    # TensorFlow loads only after setup() has set TF_CPP_MIN_LOG_LEVEL (read once, at its import).
    import keras  # noqa: PLC0415

    if shutil.which("dot") is None:
        return "Graphviz `dot` is not installed (apt-get install graphviz); skipping the diagram."
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    keras.utils.plot_model(keras_model, to_file=str(path), show_shapes=True, expand_nested=False, dpi=60)
    return Image(filename=str(path))


def train(cfg: RunConfig):
    # TensorFlow loads only after setup() has set TF_CPP_MIN_LOG_LEVEL (read once, at its import).
    from vinted_classifier.train import train as train_run  # noqa: PLC0415

    return train_run(cfg)


def figure(run_dir: Path, name: str):
    return Image(filename=str(Path(run_dir) / "figures" / name))


def drift_demo(cfg: RunConfig, version_dir: Path, smoke: bool = False):
    """``vinted drift``: the test set and a darker, smaller copy without one category vs the export's reference."""
    # TensorFlow loads only after setup() has set TF_CPP_MIN_LOG_LEVEL (read once, at its import).
    from vinted_classifier.monitoring.report import drift_demo as run_demo  # noqa: PLC0415

    table, figure_path, shift = run_demo(cfg, version_dir, Path(cfg.output_dir) / "monitoring", 60 if smoke else None)
    return table, Image(filename=str(figure_path)), shift


def predictions_path(cfg: RunConfig, smoke: bool = False) -> Path:
    """The homework file in the project root; in smoke mode beside the temp run so the committed file stays."""
    return Path(cfg.output_dir) / "predictions.parquet" if smoke else PROJECT_ROOT / "predictions.parquet"


def predict(run_dir: Path, out_path: Path = PROJECT_ROOT / "predictions.parquet") -> pd.DataFrame:
    # TensorFlow loads only after setup() has set TF_CPP_MIN_LOG_LEVEL (read once, at its import).
    from vinted_classifier.predict import predict_test_set  # noqa: PLC0415

    return predict_test_set(run_dir, out_path=out_path)


def score_predictions(predictions: pd.DataFrame, cfg: RunConfig, run_dir: Path) -> pd.DataFrame | str:
    """Top-1/top-2 and tag F1 against the demo's hidden ``test_labels.parquet`` (if present), as evaluation scores."""
    return score_predictions_file(
        predictions,
        Path(cfg.data.data_dir) / "test_labels.parquet",
        id_column=cfg.data.id_column,
        category_column=cfg.data.category_column,
        categories=run_labels(run_dir).categories,
        tag_names=cfg.data.tag_columns,
    )


def run_labels(run_dir: Path) -> RunLabels:
    return RunLabels.load(Path(run_dir) / LABELS_FILE)


def detailed_predictions(path: Path) -> pd.DataFrame:
    """The ``*_detailed.parquet`` written beside predictions.parquet (names and probabilities)."""
    return pd.read_parquet(Path(path).with_name(Path(path).stem + "_detailed.parquet"))


def export(run_dir: Path, cfg: RunConfig) -> Path:
    # TensorFlow loads only after setup() has set TF_CPP_MIN_LOG_LEVEL (read once, at its import).
    from vinted_classifier.export import export_run  # noqa: PLC0415

    return export_run(run_dir, cfg.export.saved_model_dir, cfg.export.model_name)


def release(run_dir: Path, cfg: RunConfig, smoke: bool = False) -> tuple[Path, str]:
    """``vinted export`` + ``vinted release``: stage the run, run the release gate; (served version, report table).

    Smoke runs (2 epochs on a tiny set) skip the server subprocess (the next cells start one) and push a
    blocked candidate with ``force`` (recorded as forced) so the serving cells have a version. A full run
    that is blocked stops here with the table.
    """
    # TensorFlow loads only after setup() has set TF_CPP_MIN_LOG_LEVEL (read once, at its import).
    from vinted_classifier.export import export_run  # noqa: PLC0415
    from vinted_classifier.release.gate import run_release  # noqa: PLC0415
    from vinted_classifier.release.report import format_table  # noqa: PLC0415
    from vinted_classifier.release.staging import served_root  # noqa: PLC0415

    if smoke:
        cfg = cfg.model_copy(update={"release": cfg.release.model_copy(update={"infra_validation": False})})
    candidate = export_run(run_dir, cfg.release.staging_dir, cfg.export.model_name, serving_config=False)
    report = run_release(cfg, candidate, force=smoke, progress=lambda text: None)
    table = format_table(report)
    if report["pushed_version"] is None:
        raise RuntimeError(f"the release gate blocked {candidate}:\n{table}")
    return served_root(cfg) / str(report["pushed_version"]), table
