"""The model's contract with everything outside training: names, file layout and ``labels.json``.

Training writes these names, and the exporter, the server's project adapter, the predictor, the
release gate, monitoring and the Beam job read them. Keeping them in one module means a rename is
one edit, and a reader can see the whole interface of an exported model on one screen.

The served model (``<saved_model_dir>/<model_name>/<version>/``)::

    saved_model.pb, variables/          the graph, with the two signatures below
    assets/labels.json                  ``RunLabels``: vocabulary, tag thresholds, image size
    assets.extra/tf_serving_warmup_requests   TF Serving warm-up records (generated images only)
    assets.extra/reference_stats.json   monitoring's reference distributions
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .utils import write_json

# config.py takes its defaults from this module, so the project root is found here, not imported from there.
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- labels (data.parquet)
DEFAULT_ID_COLUMN = "uuid"
DEFAULT_CATEGORY_COLUMN = "cc3"
DEFAULT_TAG_COLUMNS = ("polka dot", "floral", "checker")

# ----------------------------------------------------------------------------- model outputs
# The softmax head is named after the category column (``RunLabels.category_output``); the sigmoid
# head always has this name.
TAGS_OUTPUT = "tags"

# ----------------------------------------------------------------------------- signatures
# ``serving_default`` takes base64 JPEG/PNG bytes (what TF Serving's REST clients send); the
# pixels signature takes decoded float32 RGB at the model's input size.
DEFAULT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"

# ----------------------------------------------------------------------------- export layout
DEFAULT_MODEL_NAME = "my_model"
DEFAULT_SAVED_MODEL_DIR = _PROJECT_ROOT / "model_training" / "saved_model"
ASSETS_DIR = "assets"
ASSETS_EXTRA_DIR = "assets.extra"
LABELS_FILE = "labels.json"
WARMUP_FILE = "tf_serving_warmup_requests"
REFERENCE_STATS_FILE = "reference_stats.json"
MODEL_FILE = "model.keras"  # a run folder's best model (the full Keras model: image -> outputs)

_LABEL_FIELDS = frozenset({"category_output", "categories", "tags", "thresholds", "image_size"})


def labels_path(version_dir: str | Path) -> Path:
    """``labels.json`` inside an exported version (or a run folder's copy, ``<run>/labels.json``)."""
    return Path(version_dir) / ASSETS_DIR / LABELS_FILE


def warmup_path(version_dir: str | Path) -> Path:
    return Path(version_dir) / ASSETS_EXTRA_DIR / WARMUP_FILE


def reference_stats_path(version_dir: str | Path) -> Path:
    return Path(version_dir) / ASSETS_EXTRA_DIR / REFERENCE_STATS_FILE


@dataclass(frozen=True)
class RunLabels:
    """The ``labels.json`` schema: everything needed to turn model outputs into named predictions."""

    category_output: str
    categories: list[str]
    tags: list[str]
    thresholds: list[float]
    image_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "category_output": self.category_output,
            "categories": list(self.categories),
            "tags": list(self.tags),
            "thresholds": [float(t) for t in self.thresholds],
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> RunLabels:
        missing = _LABEL_FIELDS - set(raw)
        if missing:
            raise ValueError(f"labels.json is missing field(s) {sorted(missing)}")
        if len(raw["thresholds"]) != len(raw["tags"]):
            raise ValueError(f"labels.json: {len(raw['thresholds'])} thresholds for {len(raw['tags'])} tags")
        height, width = (int(v) for v in raw["image_size"])
        return cls(
            raw["category_output"],
            list(raw["categories"]),
            list(raw["tags"]),
            [float(t) for t in raw["thresholds"]],
            (height, width),
        )

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> RunLabels:
        if not Path(path).is_file():
            raise FileNotFoundError(f"labels file not found: {path} (train a model first: `make train`)")
        return cls.from_dict(json.loads(Path(path).read_text()))
