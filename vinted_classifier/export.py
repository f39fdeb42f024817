"""Versioned SavedModel export that TensorFlow Serving (real or ours) loads unchanged.

Signatures (all outputs batch-first, float32/int64/string — never float16):

``serving_default(image_bytes: string[-1])``
    Encoded JPEG/PNG bytes; decoded, resized (aspect kept, padded) and normalised in-graph
    with the same function as training (``pipeline.decode_and_resize``).
``serving_pixels(input_image: float32[-1, h, w, 3])``
    Pixels in [0, 1] of any size (the seed solution's request format); resized in-graph.

Outputs: ``<category_output>`` (e.g. ``cc3``) probabilities, ``tags`` probabilities,
``top2_codes`` int64 [-1, 2], ``top2_names`` string [-1, 2], ``tag_flags`` int64 [-1, T]
at the tuned thresholds. Vocabulary and thresholds are graph constants, and also
``assets/labels.json``.

A version is written to a hidden temporary folder and renamed into place in one step,
so a server polling the base path never sees a half-written version.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from .pipeline import decode_and_resize, resize_pixels
from .runs import RunLabels

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serving_pixels"


def existing_versions(model_root: Path) -> list[int]:
    """Numeric version folders under a model's base path (others are ignored, like TF Serving)."""
    if not model_root.is_dir():
        return []
    return sorted(int(p.name) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_root: Path) -> int:
    versions = existing_versions(model_root)
    return versions[-1] + 1 if versions else 1


def _serving_outputs(model, labels: RunLabels, images):
    import tensorflow as tf

    outputs = model(images, training=False)
    category = tf.cast(outputs[labels.category_output], tf.float32)
    tags = tf.cast(outputs["tags"], tf.float32)
    top2 = tf.math.top_k(category, k=2).indices
    names = tf.gather(tf.constant(labels.categories), top2)
    thresholds = tf.constant(labels.thresholds, dtype=tf.float32)
    return {
        labels.category_output: category,
        "tags": tags,
        "top2_codes": tf.cast(top2, tf.int64),
        "top2_names": names,
        "tag_flags": tf.cast(tags >= thresholds, tf.int64),
    }


def build_serving_module(model, labels: RunLabels):
    """A ``tf.Module`` holding the model's variables and both serving functions.

    Plain ``tf.saved_model.save`` of this module stores each variable once. (Keras's
    ``ExportArchive`` in 3.15 stores every variable twice, under ``variables/N`` and
    ``_all_variables/N``, doubling the file and the RAM of every server that loads it:
    keras-team/keras#23553.)
    """
    import tensorflow as tf

    if len(labels.categories) < 2:
        raise ValueError("export needs at least 2 categories for the top-2 outputs")
    height, width = labels.image_size

    def from_bytes(image_bytes):
        images = tf.map_fn(lambda raw: decode_and_resize(raw, (height, width)), image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        return _serving_outputs(model, labels, images)

    def from_pixels(input_image):
        images = resize_pixels(tf.cast(input_image, tf.float32) * 255.0, (height, width))
        return _serving_outputs(model, labels, images)

    module = tf.Module()
    # Track what the functions capture, and only that: the weights plus the random layers' seed
    # states. (Tracking the model itself would also save its optimizer and metric variables.)
    module.model_variables = list(model.variables)
    module.serve_bytes = tf.function(
        from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    module.serve_pixels = tf.function(
        from_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="input_image")])
    return module


def save_serving_module(module, path: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(path), signatures={DEFAULT_SIGNATURE: module.serve_bytes,
                                                       PIXELS_SIGNATURE: module.serve_pixels})


def export_saved_model(model, labels: RunLabels, base_dir: str | Path, model_name: str = "my_model",
                       version: int | None = None) -> Path:
    """Write ``<base_dir>/<model_name>/<version>/`` atomically; return its path."""
    model_root = Path(base_dir) / model_name
    model_root.mkdir(parents=True, exist_ok=True)
    version = next_version(model_root) if version is None else int(version)
    final = model_root / str(version)
    if final.exists():
        raise FileExistsError(f"version {version} already exists at {final}; versions are immutable")
    staging = model_root / f".export-{version}-{uuid.uuid4().hex[:8]}"  # not numeric: servers skip it
    try:
        save_serving_module(build_serving_module(model, labels), staging)
        assets = staging / "assets"
        assets.mkdir(exist_ok=True)
        labels.save(assets / "labels.json")
        os.rename(staging, final)  # one atomic step on the same filesystem
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s version %d to %s", model_name, version, final)
    return final


def export_run(run_dir: str | Path, base_dir: str | Path | None = None, model_name: str | None = None) -> Path:
    """Export a finished run's best model with its labels and thresholds."""
    from .runs import load_run

    cfg, labels, model = load_run(run_dir)
    return export_saved_model(model, labels, base_dir or cfg.export.saved_model_dir,
                              model_name or cfg.export.model_name)
