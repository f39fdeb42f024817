"""A run folder's artefacts: what is written after training and read by evaluate/predict/export.

``model_training/<run-name>/``
    config.yaml      resolved RunConfig
    run.json         weights source, precision policy, seed, versions, timings, data facts
    labels.json      vocabulary, tuned tag thresholds, image size (also shipped in the SavedModel)
    model.keras      the best model (full: image -> {cc3, tags})
    history.csv      per-epoch logs (CSVLogger), history.json
    metrics.json     held-out evaluation (+ validation), figures/*.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, load_config
from .contract import LABELS_FILE, MODEL_FILE, TAGS_OUTPUT, RunLabels
from .model import load_model
from .progress import keras_callback


def load_run(run_dir: str | Path) -> tuple[RunConfig, RunLabels, Any]:
    """Load a finished run: its config, labels and best model (compile=False, for inference)."""
    run_dir = Path(run_dir)
    model_path = run_dir / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"no trained model at {model_path} (run `make train` or `vinted train`)")
    cfg = load_config(run_dir / "config.yaml")
    labels = RunLabels.load(run_dir / LABELS_FILE)
    model = load_model(model_path, compile=False)  # registers the custom layers first
    return cfg, labels, model


def predict_probabilities(
    model, dataset, category_output: str, *, description: str = "predicting"
) -> tuple[np.ndarray, np.ndarray]:
    """Run a model over a dataset of images; return (category probs [N,C], tag probs [N,T]).

    A progress bar per batch shows on a terminal (see ``progress``).
    """
    batches = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
    out = model.predict(dataset, verbose=0, callbacks=[keras_callback(batches if batches >= 0 else None, description)])
    return np.asarray(out[category_output], np.float32), np.asarray(out[TAGS_OUTPUT], np.float32)
