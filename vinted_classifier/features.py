"""An on-disk cache of frozen-backbone features, so phase 1 trains the head without re-running VGG.

While the backbone is frozen its output for an image never changes, so phase 1 computes it once
per image (plus a fixed number of augmented views) and trains the head on those vectors. The
vectors go to a flat binary file, not into RAM: each record is ``[features..., category code,
tags...]`` in float32, read back by ``tf.data.FixedLengthRecordDataset`` with a bounded shuffle
buffer. Memory therefore stays flat however large the dataset (the page cache, not the process,
holds the file), and the only thing that grows is disk: ``rows x (dim + 1 + tags) x 4`` bytes.

Views are written in blocks (all clean rows, then each augmented view), each in the order of
the extraction dataset. With a shuffle buffer at least as large as the file (the demo set) every
epoch is a full shuffle; for larger sets the trainer shuffles the extraction pass, so the bounded
buffer draws from rows already in random order.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import progress
from .utils import atomic_path, write_json

log = logging.getLogger(__name__)

RECORD_DTYPE = np.float32


@dataclass(frozen=True)
class FeatureCache:
    """Where a finished cache lies and how to read its records."""

    path: Path
    rows: int
    feature_dim: int
    n_tags: int
    key: dict

    @property
    def record_bytes(self) -> int:
        """One row: the features, the category code, the tags."""
        return (self.feature_dim + 1 + self.n_tags) * np.dtype(RECORD_DTYPE).itemsize


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def load_feature_cache(path: Path, key: dict) -> FeatureCache | None:
    """The cache at ``path`` if it is complete and was made with the same ``key``; else None."""
    if not (path.is_file() and _meta_path(path).is_file()):
        return None
    meta = json.loads(_meta_path(path).read_text())
    cache = FeatureCache(path, meta["rows"], meta["feature_dim"], meta["n_tags"], meta["key"])
    if cache.key != key or path.stat().st_size != cache.rows * cache.record_bytes:
        return None
    return cache


def write_feature_cache(bundle, dataset, path: Path, *, category_output: str, augment_views: int = 0,
                        key: dict | None = None) -> FeatureCache:
    """Run the frozen feature extractor over ``dataset`` once and stream the records to ``path``.

    ``dataset`` yields ``(images, {category_output: codes, "tags": tags})``. The clean view comes
    first, then ``augment_views`` views through ``bundle.augmenter`` (skipped without one). The
    file and its ``.json`` sidecar appear only when complete (temporary names, then rename), and
    a complete cache with the same ``key`` is reused instead of recomputed (resume after a crash).
    """
    import tensorflow as tf

    key = dict(key or {}, augment_views=int(augment_views))
    if (existing := load_feature_cache(path, key)) is not None:
        log.info("reusing feature cache %s (%d rows)", path, existing.rows)
        return existing
    extract = tf.function(lambda x: bundle.feature_extractor(x, training=False), reduce_retracing=True)
    views = [None]
    if augment_views and bundle.augmenter is not None:
        augment = tf.function(lambda x: bundle.augmenter(x, training=True), reduce_retracing=True)
        views += [augment] * augment_views
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [path.with_name(f".{path.name}.view{v}.part") for v in range(len(views))]
    rows, feature_dim, n_tags = 0, 0, 0
    try:
        files = [open(part, "wb") for part in parts]
        try:
            batches = int(dataset.cardinality())
            for images, targets in progress.bar(dataset, total=batches if batches >= 0 else None,
                                                desc=f"caching features ({path.stem}, {len(views)} view(s))",
                                                unit="batch"):
                labels = np.concatenate([
                    np.asarray(targets[category_output], RECORD_DTYPE)[:, None],
                    np.asarray(targets["tags"], RECORD_DTYPE)], axis=1)
                for view, out in zip(views, files):
                    features = np.asarray(extract(images if view is None else view(images)), RECORD_DTYPE)
                    out.write(np.concatenate([features, labels], axis=1).tobytes())
                rows += len(labels)
                feature_dim, n_tags = features.shape[1], labels.shape[1] - 1
        finally:
            for out in files:
                out.close()
        if rows == 0:
            raise ValueError(f"no images to cache features for ({path})")
        with atomic_path(path) as tmp, open(tmp, "wb") as joined:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, joined, 1 << 22)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    cache = FeatureCache(path, rows * len(views), int(feature_dim), int(n_tags), key)
    write_json(_meta_path(path), {k: v for k, v in asdict(cache).items() if k != "path"})
    log.info("feature cache %s: %d rows (%d image(s) x %d view(s)), dim %d, %.1f MiB", path, cache.rows, rows,
             len(views), cache.feature_dim, path.stat().st_size / 2**20)
    return cache


def feature_dataset(cache: FeatureCache, *, batch_size: int, category_output: str, shuffle_buffer: int = 0,
                    seed: int = 0, class_weights: np.ndarray | None = None):
    """Batches ``(features, targets[, sample weights])`` streamed from a cache file, as the head's fit expects."""
    import tensorflow as tf

    dim = cache.feature_dim
    ds = tf.data.FixedLengthRecordDataset(str(cache.path), record_bytes=cache.record_bytes, buffer_size=1 << 20)
    # A known length lets Keras count the steps of an epoch instead of probing for the end.
    ds = ds.apply(tf.data.experimental.assert_cardinality(cache.rows))
    if shuffle_buffer > 0:
        if cache.rows <= shuffle_buffer:
            # The buffer will hold every row anyway: keep them in memory after the first epoch
            # instead of re-reading the file (same memory bound, less work per epoch).
            ds = ds.cache()
        ds = ds.shuffle(min(shuffle_buffer, cache.rows), seed=seed, reshuffle_each_iteration=True)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def split(raw):
        records = tf.io.decode_raw(raw, tf.float32)  # [batch, dim + 1 + tags]
        codes = tf.cast(records[:, dim], tf.int64)
        targets = {category_output: codes, "tags": records[:, dim + 1:]}
        if weights is None:
            return records[:, :dim], targets
        per_row = tf.gather(weights, codes)
        return records[:, :dim], targets, {category_output: per_row, "tags": tf.ones_like(per_row)}

    # Batch the raw records first: one vectorised decode per batch instead of one per row.
    return ds.batch(batch_size).map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
