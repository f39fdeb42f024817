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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import RunConfig, load_config


@dataclass(frozen=True)
class RunLabels:
    """Everything needed to turn model outputs into named predictions."""

    category_output: str
    categories: list[str]
    tags: list[str]
    thresholds: list[float]
    image_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {"category_output": self.category_output, "categories": list(self.categories),
                "tags": list(self.tags), "thresholds": [float(t) for t in self.thresholds],
                "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, raw: dict) -> "RunLabels":
        missing = {"category_output", "categories", "tags", "thresholds", "image_size"} - set(raw)
        if missing:
            raise ValueError(f"labels.json is missing field(s) {sorted(missing)}")
        if len(raw["thresholds"]) != len(raw["tags"]):
            raise ValueError(f"labels.json: {len(raw['thresholds'])} thresholds for {len(raw['tags'])} tags")
        return cls(raw["category_output"], list(raw["categories"]), list(raw["tags"]),
                   [float(t) for t in raw["thresholds"]], tuple(int(v) for v in raw["image_size"]))

    def save(self, path: Path) -> None:
        from .utils import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "RunLabels":
        if not Path(path).is_file():
            raise FileNotFoundError(f"labels file not found: {path} (train a model first: `make train`)")
        return cls.from_dict(json.loads(Path(path).read_text()))


def load_run(run_dir: str | Path) -> tuple[RunConfig, RunLabels, "object"]:
    """Load a finished run: its config, labels and best model (compile=False, for inference)."""
    from .model import load_model

    run_dir = Path(run_dir)
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"no trained model at {model_path} (run `make train` or `vinted train`)")
    cfg = load_config(run_dir / "config.yaml")
    labels = RunLabels.load(run_dir / "labels.json")
    model = load_model(model_path, compile=False)  # registers the custom layers first
    return cfg, labels, model


def predict_probabilities(model, dataset, category_output: str, *, description: str = "predicting"
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Run a model over a dataset of images; return (category probs [N,C], tag probs [N,T]).

    A progress bar per batch shows on a terminal (see ``progress``).
    """
    from .progress import keras_callback

    batches = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
    out = model.predict(dataset, verbose=0, callbacks=[keras_callback(batches if batches >= 0 else None, description)])
    return np.asarray(out[category_output], np.float32), np.asarray(out["tags"], np.float32)
