"""What the evaluator runs on: the frozen held-out rows, their slices, simple baselines, a SavedModel runner."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .. import data
from ..contract import DEFAULT_SIGNATURE, TAGS_OUTPUT, RunLabels, labels_path
from .checks import Predictions

BATCH = 32
PROBE_THUMBNAIL = 4  # the linear probe sees a 4x4 colour thumbnail + per-channel mean and spread


# ----------------------------------------------------------------- a SavedModel, in process


class SavedModelRunner:
    """A version folder loaded with ``tf.saved_model.load``; encoded images in, NumPy outputs out."""

    def __init__(self, version_dir: str | Path):
        self.path = Path(version_dir)
        self.labels = RunLabels.load(labels_path(self.path))
        self._module = tf.saved_model.load(str(self.path))
        self._function = self._module.signatures[DEFAULT_SIGNATURE]

    def outputs(self, images: list[bytes], batch: int = BATCH) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), batch):
            result = self._function(image_bytes=tf.constant(images[start : start + batch]))
            for key, value in result.items():
                parts.setdefault(key, []).append(value.numpy())
        return {key: np.concatenate(values) for key, values in parts.items()}

    def predictions(self, images: list[bytes]) -> Predictions:
        out = self.outputs(images)
        return Predictions(out[self.labels.category_output], out[TAGS_OUTPUT], np.asarray(self.labels.thresholds))

    def seconds_per_image(self, images: list[bytes]) -> float:
        started = time.perf_counter()
        self.outputs(images, batch=len(images))
        return (time.perf_counter() - started) / len(images)


def compare_latency(
    candidate: SavedModelRunner, served: SavedModelRunner, images: list[bytes], rounds: int = 5
) -> tuple[float, float]:
    """(candidate, served) seconds per image: interleaved rounds, the minimum of each (least disturbed)."""
    candidate.seconds_per_image(images), served.seconds_per_image(images)  # first calls trace and warm up
    times = [(candidate.seconds_per_image(images), served.seconds_per_image(images)) for _ in range(rounds)]
    return min(t[0] for t in times), min(t[1] for t in times)


def version_bytes(version_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(version_dir).rglob("*") if p.is_file())


# ----------------------------------------------------------------- held-out rows and slices


@dataclass
class Holdout:
    frame: pd.DataFrame  # uuid, path, code, tags..., extra columns, brightness, pixels
    y_cat: np.ndarray
    y_tags: np.ndarray
    train_codes: np.ndarray
    train_paths: list[str]
    tag_names: list[str]
    categories: list[str]

    def images(self) -> list[bytes]:
        return [Path(p).read_bytes() for p in self.frame["path"]]


def image_condition(path: str | Path) -> tuple[float, int]:
    """(mean brightness 0-255, pixel count) of one image file."""
    with Image.open(path) as image:
        pixels = image.size[0] * image.size[1]
        image.draft("L", (64, 64))  # JPEG DCT scaling: brightness from a small decode
        return float(np.asarray(image.convert("L"), np.float32).mean()), pixels


def load_holdout(run_cfg, labels: RunLabels) -> Holdout:
    """The candidate run's frozen held-out split (its splits file), checked against the model's vocabulary."""
    prepared = data.prepare(run_cfg.data, run_cfg.seed)
    if list(prepared.vocab.categories) != list(labels.categories) or list(prepared.vocab.tags) != list(labels.tags):
        raise ValueError(
            f"the held-out data in {run_cfg.data.data_dir} has categories {prepared.vocab.categories} "
            f"and tags {prepared.vocab.tags}; the candidate's assets/labels.json has {labels.categories} "
            f"and {labels.tags}"
        )
    frame = prepared.frames["holdout"].copy()
    if frame.empty:
        raise ValueError(f"the held-out split of {run_cfg.data.data_dir} is empty")
    conditions = [image_condition(p) for p in frame["path"]]
    frame["brightness"] = [c[0] for c in conditions]
    frame["pixels"] = [c[1] for c in conditions]
    return Holdout(
        frame,
        prepared.codes("holdout"),
        prepared.tags("holdout").astype(np.int64),
        prepared.codes("train"),
        prepared.paths("train"),
        list(labels.tags),
        list(labels.categories),
    )


def quartile_labels(values: pd.Series, name: str) -> pd.Series:
    """``<name> q1``..``q4`` by quantile (fewer when values repeat)."""
    ranks = values.rank(method="first")
    bins = pd.qcut(ranks, q=min(4, len(values)), labels=False)
    return bins.map(lambda b: f"{name} q{int(b) + 1}")


def slice_masks(holdout: Holdout, category_column: str, extra_columns: list[str]) -> dict[str, np.ndarray]:
    """Boolean row masks: true category, each extra column's values, brightness and image-size quartiles."""
    frame = holdout.frame
    columns = {category_column: frame[category_column].astype(str)}
    for column in extra_columns:
        if column in frame:
            columns[column] = frame[column].astype(str)
    masks = {
        f"{col}={value}": (series == value).to_numpy()
        for col, series in columns.items()
        for value in sorted(series.unique())
    }
    for name in ("brightness", "pixels"):
        groups = quartile_labels(frame[name], name)
        masks.update({value: (groups == value).to_numpy() for value in sorted(groups.unique())})
    return masks


# ----------------------------------------------------------------- simpler models


def class_prior_top1(train_codes: np.ndarray, y_cat: np.ndarray) -> float:
    """Top-1 of always answering the most frequent training category."""
    return float((y_cat == np.bincount(train_codes).argmax()).mean())


def colour_features(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        image.draft("RGB", (64, 64))
        pixels = np.asarray(image.convert("RGB").resize((32, 32)), np.float32) / 255.0
    thumbnail = (
        np.asarray(
            Image.fromarray((pixels * 255).astype(np.uint8)).resize((PROBE_THUMBNAIL, PROBE_THUMBNAIL)), np.float32
        ).ravel()
        / 255.0
    )
    return np.concatenate([thumbnail, pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))])


def linear_probe_top1(holdout: Holdout, seed: int = 0) -> float | None:
    """Top-1 of a logistic regression on colour features, trained on the training split (None: one class)."""
    if len(np.unique(holdout.train_codes)) < 2:
        return None
    train = np.stack([colour_features(p) for p in holdout.train_paths])
    test = np.stack([colour_features(p) for p in holdout.frame["path"]])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train, holdout.train_codes)
    return float((probe.predict(test) == holdout.y_cat).mean())


# ----------------------------------------------------------------- adversarially plain inputs


def plain_images(image_size: tuple[int, int]) -> dict[str, bytes]:
    """Black, white, noise (model size) and a large noise image: inputs a model must not answer NaN to."""
    height, width = image_size
    rng = np.random.default_rng(0)

    def jpeg(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
        return buffer.getvalue()

    return {
        "black": jpeg(np.zeros((height, width, 3))),
        "white": jpeg(np.full((height, width, 3), 255)),
        "noise": jpeg(rng.integers(0, 256, (height, width, 3))),
        "noise 1200x900": jpeg(rng.integers(0, 256, (900, 1200, 3))),
        "grey 1x1 png": jpeg(np.full((1, 1, 3), 128), "PNG"),
    }
