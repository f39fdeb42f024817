"""The notebook's thin entry point: one call per notebook step, all logic in ``vinted_classifier``.

    import module as m
    cfg = m.config(smoke=True)
    labels = m.load_labels(cfg)
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vinted_classifier import data, eda  # noqa: F401  (eda re-exported for the notebook)
from vinted_classifier.config import PROJECT_ROOT, RunConfig, load_config

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"
SMOKE_OVERRIDES = [
    "model.image_height=64", "model.image_width=48", "train.head_epochs=2", "train.finetune_epochs=0",
    "train.cached_augmented_views=0", "train.early_stopping_patience=0",
]
# The notebook runner points this at a folder it deletes afterwards; otherwise smoke runs use a fresh temp dir.
WORKDIR_ENV = "VINTED_NOTEBOOK_WORKDIR"


def setup(level: int = logging.INFO) -> None:
    """Logging for the notebook; quiet TensorFlow's C++ start-up chatter; inline PNGs for matplotlib Figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:  # eda returns pyplot-free Figures: register their PNG formatter
        shell.run_line_magic("matplotlib", "inline")


def config(*, data_dir: str | Path | None = None, backbone: str | None = None, image_size=None,
           epochs: int | None = None, finetune_epochs: int | None = None, run_name: str | None = None,
           smoke: bool = False, extra: list[str] | None = None) -> RunConfig:
    """The default run config with the notebook's parameters applied.

    ``smoke=True`` applies ``SMOKE_OVERRIDES`` last (they win over image_size/epochs) and moves the run folder,
    the SavedModel base and (without ``data_dir``) the demo data into a temp workspace, so nothing committed
    is touched.
    """
    overrides = []
    for key, value in [("data.data_dir", data_dir), ("model.backbone", backbone), ("train.head_epochs", epochs),
                       ("train.finetune_epochs", finetune_epochs), ("run_name", run_name)]:
        if value is not None:
            overrides.append(f"{key}={value}")
    if image_size is not None:
        overrides += [f"model.image_height={image_size[0]}", f"model.image_width={image_size[1]}"]
    if smoke:
        overrides += SMOKE_OVERRIDES + _smoke_paths(data_dir)
    cfg = load_config(DEFAULT_CONFIG, overrides + list(extra or []))
    if not Path(cfg.data.data_dir).is_absolute():
        cfg.data.data_dir = PROJECT_ROOT / cfg.data.data_dir
    return cfg


def _smoke_paths(data_dir) -> list[str]:
    workdir = Path(os.environ.get(WORKDIR_ENV) or tempfile.mkdtemp(prefix="vinted-notebook-smoke-"))
    paths = [f"output_dir={workdir / 'runs'}", f"export.saved_model_dir={workdir / 'saved_model'}"]
    return paths + ([f"data.data_dir={workdir / 'demo'}"] if data_dir is None else [])


def config_yaml(cfg: RunConfig, *sections: str) -> str:
    """The resolved config (or only some sections, e.g. "model", "train") as YAML, for printing."""
    import yaml

    full = cfg.model_dump(mode="json")
    return yaml.safe_dump({k: full[k] for k in sections} if sections else full, sort_keys=False)


def environment() -> dict:
    """Which interpreter runs the notebook (the runner checks it is the project's venv)."""
    import platform

    return {"python": platform.python_version(), "sys.prefix": sys.prefix, "executable": sys.executable}


def ensure_demo_data(cfg: RunConfig, scale: float = 1.0, *, generate: bool = True) -> Path:
    """Generate the synthetic demo set if the configured folder has no labels yet.

    ``generate=False`` (a user-supplied data folder) never writes there: a missing labels file is an error.
    """
    folder = Path(cfg.data.data_dir)
    if not (folder / cfg.data.labels_file).is_file():
        if not generate:
            raise FileNotFoundError(f"{folder / cfg.data.labels_file} not found: "
                                    "point data_dir at a Vinted-layout folder")
        from vinted_classifier.demo import generate_demo_dataset

        generate_demo_dataset(folder, scale=scale, force=True)
    return folder


def load_labels(cfg: RunConfig) -> pd.DataFrame:
    return data.read_labels(cfg.data)


def load_test_ids(cfg: RunConfig) -> pd.DataFrame:
    return data.read_test_ids(cfg.data)


def prepare(cfg: RunConfig) -> data.PreparedData:
    """Validate images, group duplicates, split (reusing the splits file), downsample."""
    return data.prepare(cfg.data, cfg.seed)


def split_table(prepared: data.PreparedData, category_column: str = "cc3") -> pd.DataFrame:
    """Rows per category and split: shows stratification and the effect of downsampling."""
    rows = pd.concat([f.assign(split=name) for name, f in prepared.frames.items()], ignore_index=True)
    table = pd.crosstab(rows[category_column], rows["split"], margins=True)
    return table[[*prepared.frames, "All"]]  # train, val, holdout order


def corrupted_copy_error(labels: pd.DataFrame, cfg: RunConfig) -> str:
    """Validate a copy with one bad tag value: the error names the file, the column and the row."""
    broken = labels.copy()
    broken.loc[broken.index[0], cfg.data.tag_columns[0]] = 2
    try:
        data.validate_labels(broken, cfg.data, source="corrupted copy of data.parquet")
    except data.SchemaError as error:
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the corrupted copy passed validation")


def downsample_effect(prepared: data.PreparedData, cfg: RunConfig, cap: int | None = None) -> pd.DataFrame:
    """Training rows per category as configured and with ``data.downsample_max_per_category=cap``.

    ``cap`` defaults to the second-largest category, i.e. trimming only the dominant one (the seed's choice).
    """
    column, train = cfg.data.category_column, prepared.frames["train"]
    counts = train[column].value_counts()
    cap = int(cap if cap is not None else counts.iloc[min(1, len(counts) - 1)])
    capped = data.downsample(train, cfg.data.model_copy(update={"downsample_max_per_category": cap}), cfg.seed)
    table = pd.DataFrame({"as configured": counts, f"cap={cap}": capped[column].value_counts()}).fillna(0).astype(int)
    table["share as configured"] = (table["as configured"] / table["as configured"].sum()).round(3)
    table[f"share cap={cap}"] = (table[f"cap={cap}"] / table[f"cap={cap}"].sum()).round(3)
    return table.rename_axis(column)


def choose_precision(cfg: RunConfig) -> tuple[str, dict]:
    """The precision policy ``auto`` resolves to on this machine, and the hardware facts behind it."""
    from vinted_classifier.precision import detect_hardware, resolve_precision

    hardware = detect_hardware()
    return resolve_precision(cfg.train.precision, hardware), hardware


def build(cfg: RunConfig, prepared: data.PreparedData):
    from vinted_classifier.model import build_model

    return build_model(cfg.model, list(prepared.vocab.categories), list(prepared.vocab.tags),
                       category_output=cfg.data.category_column)


def plot_model(keras_model, path: str | Path):
    """Model diagram via pydot + Graphviz; a clear message instead of a crash when Graphviz is absent."""
    import shutil

    import keras

    if shutil.which("dot") is None:
        return "Graphviz `dot` is not installed (apt-get install graphviz); skipping the diagram."
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    keras.utils.plot_model(keras_model, to_file=str(path), show_shapes=True, expand_nested=False, dpi=60)
    from IPython.display import Image

    return Image(filename=str(path))


def train(cfg: RunConfig):
    from vinted_classifier.train import train as _train

    return _train(cfg)


def figure(run_dir: Path, name: str):
    from IPython.display import Image

    return Image(filename=str(Path(run_dir) / "figures" / name))


def metrics_table(metrics: dict) -> pd.DataFrame:
    """Per-tag precision/recall/F1/AUC/threshold as a table."""
    per_tag = metrics["tags"]["per_tag"]
    return pd.DataFrame(per_tag).T[["threshold", "precision", "recall", "f1", "roc_auc", "support"]]


def slices_table(metrics: dict) -> pd.DataFrame:
    return pd.DataFrame(metrics.get("slices", {})).T


def summary_table(metrics: dict) -> pd.DataFrame:
    """Headline numbers per evaluated split (validation tunes the thresholds; holdout is untouched)."""
    return pd.DataFrame({split: {"n": m["n"], "top1_accuracy": m["top1_accuracy"], "top2_accuracy": m["top2_accuracy"],
                                 "category_macro_f1": m["categories"]["macro_f1"], "tag_macro_f1": m["tags"]["macro_f1"]}
                         for split, m in metrics.items()}).T


def predictions_path(cfg: RunConfig, smoke: bool = False) -> Path:
    """The homework file in the project root; in smoke mode beside the temp run so the committed file stays."""
    return Path(cfg.output_dir) / "predictions.parquet" if smoke else PROJECT_ROOT / "predictions.parquet"


def score_predictions(predictions: pd.DataFrame, cfg: RunConfig, run_dir: Path) -> pd.DataFrame | str:
    """Top-1/top-2 accuracy and tag F1 against ``test_labels.parquet`` (the demo's hidden answers), if present."""
    from sklearn.metrics import f1_score

    path = Path(cfg.data.data_dir) / "test_labels.parquet"
    if not path.is_file():
        return f"no {path.name} in {path.parent}: the real test labels are hidden, nothing to score against"
    truth = predictions.merge(pd.read_parquet(path), on=cfg.data.id_column, suffixes=("", "_true"), validate="1:1")
    codes = data.Vocabulary(tuple(run_labels(run_dir).categories), ()).encode(truth[cfg.data.category_column])
    scores = {"n": len(truth), "top1_accuracy": float(np.mean(truth["category1"] == codes)),
              "top2_accuracy": float(np.mean((truth["category1"] == codes) | (truth["category2"] == codes)))}
    f1 = {f"{tag} F1": f1_score(truth[f"{tag}_true"], truth[tag], zero_division=0) for tag in cfg.data.tag_columns}
    return pd.Series({**scores, **f1, "tag macro F1": float(np.mean(list(f1.values())))}, name="test").to_frame()


def run_labels(run_dir: Path):
    from vinted_classifier.runs import RunLabels

    return RunLabels.load(Path(run_dir) / "labels.json")


def detailed_predictions(path: Path) -> pd.DataFrame:
    """The ``*_detailed.parquet`` written beside predictions.parquet (names and probabilities)."""
    path = Path(path)
    return pd.read_parquet(path.with_name(path.stem + "_detailed.parquet"))


def predict(run_dir: Path, out_path: Path = PROJECT_ROOT / "predictions.parquet") -> pd.DataFrame:
    from vinted_classifier.predict import predict_test_set

    return predict_test_set(run_dir, out_path=out_path)


def export(run_dir: Path, cfg: RunConfig) -> Path:
    from vinted_classifier.export import export_run

    return export_run(run_dir, cfg.export.saved_model_dir, cfg.export.model_name)


# ----------------------------------------------------------------------------- serving


def start_server(cfg: RunConfig, port: int = 9000, timeout: float = 300.0) -> subprocess.Popen:
    """Start the TF-Serving-compatible REST server in the background; wait until it answers.

    Refuses a port that is already taken, so the notebook never queries somebody else's server.
    """
    import socket

    import requests

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is already in use: stop that server or run with -p port=<free port>")

    base = Path(cfg.export.saved_model_dir) / cfg.export.model_name
    command = [sys.executable, "-m", "vinted_classifier.cli", "serve", f"--rest_api_port={port}",
               f"--model_name={cfg.export.model_name}", f"--model_base_path={base}"]
    log_file = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    atexit.register(_kill_quietly, process)  # a failing cell later on must not leave the port taken
    url = f"http://127.0.0.1:{port}/v1/models/{cfg.export.model_name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_file.seek(0)
            raise RuntimeError(f"server exited with code {process.returncode}: {log_file.read()[-2000:]}")
        try:
            status = requests.get(url, timeout=2).json()
            if any(v["state"] == "AVAILABLE" for v in status.get("model_version_status", [])):
                return process
        except (requests.ConnectionError, requests.Timeout, ValueError):
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"server on port {port} did not become AVAILABLE within {timeout:.0f}s")


def stop_server(process: subprocess.Popen) -> int:
    process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _kill_quietly(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()


def sample_images(cfg: RunConfig, uuids, n: int = 4) -> list[Path]:
    """Image files of the first ``n`` uuids (e.g. the first test rows, in predictions order)."""
    report = data.check_images(list(uuids)[:n], cfg.data, decode=False)
    return [Path(report.paths[u]) for u in list(uuids)[:n]]


def b64_request(paths: list[str | Path]) -> dict:
    """TF Serving row-format request with the raw JPEG bytes as ``{"b64": ...}``."""
    return {"signature_name": "serving_default",
            "instances": [{"b64": base64.b64encode(Path(p).read_bytes()).decode()} for p in paths]}


def pixels_request(paths: list[str | Path], image_size: tuple[int, int]) -> dict:
    """The seed solution's request: float pixels in [0, 1], here via the ``serving_pixels`` signature."""
    from vinted_classifier.pipeline import load_images

    pixels = load_images([str(p) for p in paths], image_size) / 255.0
    return {"signature_name": "serving_pixels", "instances": pixels.round(4).tolist()}


def query(request: dict, port: int = 9000, model_name: str = "my_model") -> tuple[dict, int]:
    """POST a predict request; return (response JSON, request size in bytes)."""
    import requests

    body = json.dumps(request)
    response = requests.post(f"http://127.0.0.1:{port}/v1/models/{model_name}:predict", data=body, timeout=120)
    response.raise_for_status()
    return response.json(), len(body.encode())


def request_sizes(sizes: dict[str, int], n_images: int) -> pd.DataFrame:
    """JSON body size per request format, in total and per image."""
    return pd.DataFrame({"request bytes": sizes,
                         "bytes per image": {k: v // n_images for k, v in sizes.items()}}).rename_axis("format")


def served_vs_local(response: dict, detailed: pd.DataFrame, labels, tol: float = 1e-2) -> pd.DataFrame:
    """Side by side: the server's top-2 and tag flags vs the notebook's predictions for the same images.

    A row matches when top-2 codes and tag flags agree; a disagreement only counts as a match when the
    probabilities involved lie within ``tol`` of each other (a tie) or of the tag threshold. ``max_prob_diff``
    shows how far the served probabilities are from the local ones (float pixels rounded to 4 decimals move
    them by ~1e-3 under bfloat16; anything larger is preprocessing skew worth a look).
    """
    rows = []
    for served, (_, local) in zip(response["predictions"], detailed.iterrows()):
        cat = np.asarray(served[labels.category_output], float)
        local_top2 = [int(local["category1"]), int(local["category2"])]
        local_tag_p = np.array([local[f"{t}_probability"] for t in labels.tags], float)
        local_flags = [int(local[t]) for t in labels.tags]
        diffs = np.abs(np.r_[cat[local_top2] - [local["category1_probability"], local["category2_probability"]],
                             np.asarray(served["tags"], float) - local_tag_p])
        ties = all(a == b or abs(cat[a] - cat[b]) <= tol for a, b in zip(served["top2_codes"], local_top2))
        borderline = all(a == b or abs(p - t) <= tol for a, b, p, t in
                         zip(served["tag_flags"], local_flags, local_tag_p, labels.thresholds))
        rows.append({"uuid": local["uuid"], "served_top2": list(served["top2_codes"]), "local_top2": local_top2,
                     "served_top2_names": list(served["top2_names"]), "served_tags": list(served["tag_flags"]),
                     "local_tags": local_flags, "max_prob_diff": float(diffs.max()), "match": ties and borderline})
    if len(rows) != len(detailed):
        raise ValueError(f"{len(rows)} served predictions for {len(detailed)} local rows")
    return pd.DataFrame(rows)


def check_served(*checks: pd.DataFrame) -> bool:
    """Print the marker the notebook test looks for; fail the cell when any served row disagrees."""
    matched = bool(all(check["match"].all() for check in checks))
    print(f"served predictions match: {matched}")
    if not matched:
        raise AssertionError("the server disagrees with the notebook's predictions:\n"
                             + "\n".join(c[~c["match"]].to_string() for c in checks))
    return matched
