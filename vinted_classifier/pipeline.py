"""tf.data input pipeline, and the one image preprocessing function shared with serving.

``decode_and_resize`` is used by training, batch prediction and the exported
SavedModel signatures alike, so there is no train/serve skew. Pixels stay in
[0, 255]; the backbone's own normalisation lives inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from .contract import DEFAULT_CATEGORY_COLUMN, TAGS_OUTPUT


def decode_and_resize(image_bytes, image_size: tuple[int, int]):
    """Encoded JPEG/PNG bytes -> float32 [H, W, 3] in [0, 255], aspect preserved.

    Portrait photos are scaled to fit and padded (not squashed), so a blouse keeps
    its proportions. Grey and RGBA images become RGB.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return resize_pixels(tf.cast(image, tf.float32), image_size)


def resize_pixels(image, image_size: tuple[int, int]):
    """float32 [h, w, 3] (any size) -> [H, W, 3], aspect-preserving resize then pad."""
    # Explicit size arithmetic (not tf.image.resize_with_pad, whose rounding differs between
    # eager mode and a traced graph) so training and the SavedModel give identical pixels.
    height, width = image_size
    shape = tf.shape(image)
    h, w = tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)
    scale = tf.minimum(height / h, width / w)
    new_h = tf.clip_by_value(tf.cast(tf.math.round(h * scale), tf.int32), 1, height)
    new_w = tf.clip_by_value(tf.cast(tf.math.round(w * scale), tf.int32), 1, width)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    padded = tf.image.pad_to_bounding_box(resized, (height - new_h) // 2, (width - new_w) // 2, height, width)
    return tf.clip_by_value(padded, 0.0, 255.0)


def make_dataset(
    paths: Sequence[str],
    *,
    image_size: tuple[int, int],
    batch_size: int,
    codes: np.ndarray | None = None,
    tags: np.ndarray | None = None,
    category_output: str = DEFAULT_CATEGORY_COLUMN,
    sample_weights: np.ndarray | None = None,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
):
    """Stream images from disk: shuffle file names, parallel read+decode, batch, prefetch.

    Only file names and labels are held in memory, so memory does not grow with the
    dataset. Yields ``images`` or ``(images, {category_output: codes, "tags": tags}[, weights])``.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("make_dataset: no image paths given")
    ds = tf.data.Dataset.from_tensor_slices(_columns(paths, codes, tags, sample_weights))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    has_labels = codes is not None and tags is not None
    weighted = sample_weights is not None

    def load(path, *rest):
        image = decode_and_resize(tf.io.read_file(path), image_size)
        if not has_labels:
            return image
        targets = {category_output: rest[0], TAGS_OUTPUT: rest[1]}
        if not weighted:
            return image, targets
        return image, targets, {category_output: rest[2], TAGS_OUTPUT: tf.ones_like(rest[2])}

    # deterministic=True keeps batch order fixed for a seed (parallel decode, ordered output).
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _columns(
    paths: list[str], codes: np.ndarray | None, tags: np.ndarray | None, sample_weights: np.ndarray | None
) -> tuple:
    """The dataset's slices: paths, then codes and tags when both are given, then the sample weights."""
    columns: list = [tf.constant(paths)]
    if codes is not None and tags is not None:
        columns += [np.asarray(codes, np.int64), np.asarray(tags, np.float32)]
        if len(codes) != len(paths) or len(tags) != len(paths):
            raise ValueError(f"make_dataset: {len(paths)} paths but {len(codes)} codes and {len(tags)} tag rows")
    if sample_weights is not None:
        columns.append(np.asarray(sample_weights, np.float32))
    return tuple(columns)


def load_images(paths: Sequence[str], image_size: tuple[int, int]) -> np.ndarray:
    """Eagerly decode a few images (tests, notebook, benchmarks) with the shared preprocessing."""
    return np.stack([decode_and_resize(tf.io.read_file(p), image_size).numpy() for p in paths])
