"""The notebook's thin entry point: one call per notebook step, all logic in ``vinted_classifier``.

    import module as m
    cfg = m.config(smoke=True)
    labels = m.load_labels(cfg)
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
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


def setup(level: int = logging.INFO) -> None:
    """Logging for the notebook; quiet TensorFlow's C++ start-up chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def config(*, data_dir: str | Path | None = None, backbone: str | None = None, image_size=None,
           epochs: int | None = None, finetune_epochs: int | None = None, run_name: str | None = None,
           smoke: bool = False, extra: list[str] | None = None) -> RunConfig:
    """The default run config with the notebook's parameters applied."""
    overrides = list(SMOKE_OVERRIDES if smoke else [])
    for key, value in [("data.data_dir", data_dir), ("model.backbone", backbone), ("train.head_epochs", epochs),
                       ("train.finetune_epochs", finetune_epochs), ("run_name", run_name)]:
        if value is not None:
            overrides.append(f"{key}={value}")
    if image_size is not None:
        overrides += [f"model.image_height={image_size[0]}", f"model.image_width={image_size[1]}"]
    cfg = load_config(DEFAULT_CONFIG, overrides + list(extra or []))
    if not Path(cfg.data.data_dir).is_absolute():
        cfg.data.data_dir = PROJECT_ROOT / cfg.data.data_dir
    return cfg


def ensure_demo_data(cfg: RunConfig, scale: float = 1.0) -> Path:
    """Generate the synthetic demo set if the configured folder has no labels yet."""
    folder = Path(cfg.data.data_dir)
    if not (folder / cfg.data.labels_file).is_file():
        from vinted_classifier.demo import generate_demo_dataset

        generate_demo_dataset(folder, scale=scale)
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
    frames = [f.assign(split=name) for name, f in prepared.frames.items()]
    return pd.crosstab(pd.concat(frames)[category_column], pd.concat(frames)["split"], margins=True)


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


def predict(run_dir: Path, out_path: Path = PROJECT_ROOT / "predictions.parquet") -> pd.DataFrame:
    from vinted_classifier.predict import predict_test_set

    return predict_test_set(run_dir, out_path=out_path)


def export(run_dir: Path, cfg: RunConfig) -> Path:
    from vinted_classifier.export import export_run

    return export_run(run_dir, cfg.export.saved_model_dir, cfg.export.model_name)


# ----------------------------------------------------------------------------- serving


def start_server(cfg: RunConfig, port: int = 9000, timeout: float = 120.0) -> subprocess.Popen:
    """Start the TF-Serving-compatible REST server in the background; wait until it answers."""
    import requests

    base = Path(cfg.export.saved_model_dir) / cfg.export.model_name
    command = [sys.executable, "-m", "vinted_classifier.cli", "serve", f"--rest_api_port={port}",
               f"--model_name={cfg.export.model_name}", f"--model_base_path={base}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/models/{cfg.export.model_name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}: {process.stderr.read()[-2000:]}")
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


def served_vs_local(response: dict, detailed: pd.DataFrame, categories: list[str], tags: list[str]) -> pd.DataFrame:
    """Side by side: the server's top-2 and tag flags vs the notebook's predictions for the same images."""
    rows = []
    for served, (_, local) in zip(response["predictions"], detailed.iterrows()):
        rows.append({"uuid": local["uuid"], "served_top2": served["top2_codes"],
                     "local_top2": [int(local["category1"]), int(local["category2"])],
                     "served_tags": served["tag_flags"], "local_tags": [int(local[t]) for t in tags],
                     "max_prob_diff": float(np.max(np.abs(np.asarray(served["cc3"]) - _probs(local, categories))))
                     if "category1_probability" in local else None})
    table = pd.DataFrame(rows)
    table["match"] = [(a == b) and (c == d) for a, b, c, d in
                      zip(table["served_top2"], table["local_top2"], table["served_tags"], table["local_tags"])]
    return table


def _probs(local: pd.Series, categories: list[str]) -> np.ndarray:
    out = np.zeros(len(categories))
    out[int(local["category1"])] = local["category1_probability"]
    out[int(local["category2"])] = local["category2_probability"]
    mask = np.zeros(len(categories), bool)
    mask[[int(local["category1"]), int(local["category2"])]] = True
    return np.where(mask, out, np.nan)
