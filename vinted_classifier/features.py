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

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import progress
from .config import RunConfig
from .contract import TAGS_OUTPUT
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


def write_feature_cache(
    bundle, dataset, path: Path, *, category_output: str, augment_views: int = 0, key: dict | None = None
) -> FeatureCache:
    """Run the frozen feature extractor over ``dataset`` once and stream the records to ``path``.

    ``dataset`` yields ``(images, {category_output: codes, "tags": tags})``. The clean view comes
    first, then ``augment_views`` views through ``bundle.augmenter`` (skipped without one). The
    file and its ``.json`` sidecar appear only when complete (temporary names, then rename), and
    a complete cache with the same ``key`` is reused instead of recomputed (resume after a crash).
    """
    # TensorFlow only when features are computed: `vinted cache status/clear` imports this module without it.
    import tensorflow as tf  # noqa: PLC0415

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
    try:
        rows, feature_dim, n_tags = _write_view_parts(extract, views, dataset, parts, path, category_output)
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
    log.info(
        "feature cache %s: %d rows (%d image(s) x %d view(s)), dim %d, %.1f MiB",
        path,
        cache.rows,
        rows,
        len(views),
        cache.feature_dim,
        path.stat().st_size / 2**20,
    )
    return cache


def _write_view_parts(
    extract, views: list, dataset, parts: list[Path], path: Path, category_output: str
) -> tuple[int, int, int]:
    """One pass over ``dataset``: each view's records to its own part file; (images, feature dim, tags)."""
    rows, feature_dim, n_tags = 0, 0, 0
    files = [open(part, "wb") for part in parts]
    try:
        batches = int(dataset.cardinality())
        for images, targets in progress.bar(
            dataset,
            total=batches if batches >= 0 else None,
            desc=f"caching features ({path.stem}, {len(views)} view(s))",
            unit="batch",
        ):
            labels = np.concatenate(
                [
                    np.asarray(targets[category_output], RECORD_DTYPE)[:, None],
                    np.asarray(targets[TAGS_OUTPUT], RECORD_DTYPE),
                ],
                axis=1,
            )
            for view, out in zip(views, files, strict=True):
                features = np.asarray(extract(images if view is None else view(images)), RECORD_DTYPE)
                out.write(np.concatenate([features, labels], axis=1).tobytes())
            rows += len(labels)
            feature_dim, n_tags = features.shape[1], labels.shape[1] - 1
    finally:
        for out in files:
            out.close()
    return rows, feature_dim, n_tags


def feature_dataset(
    cache: FeatureCache,
    *,
    batch_size: int,
    category_output: str,
    shuffle_buffer: int = 0,
    seed: int = 0,
    class_weights: np.ndarray | None = None,
):
    """Batches ``(features, targets[, sample weights])`` streamed from a cache file, as the head's fit expects."""
    # TensorFlow only when features are read: `vinted cache status/clear` imports this module without it.
    import tensorflow as tf  # noqa: PLC0415

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
        targets = {category_output: codes, TAGS_OUTPUT: records[:, dim + 1 :]}
        if weights is None:
            return records[:, :dim], targets
        per_row = tf.gather(weights, codes)
        return records[:, :dim], targets, {category_output: per_row, TAGS_OUTPUT: tf.ones_like(per_row)}

    # Batch the raw records first: one vectorised decode per batch instead of one per row.
    return ds.batch(batch_size).map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- the shared feature store
#
# One content-addressed store of frozen-backbone feature vectors under ``<output_dir>/feature_cache``
# (``train.feature_cache_dir``), shared by ``train``, ``search``, ``cv`` and every later run on the
# same images. A folder per model key (backbone, a fingerprint of its weights, image size, pooling,
# precision), then one small file per (image bytes hash, view, augmentation seed): the clean view
# (0) does not depend on the seed and is shared by every seed; view v > 0 is one draw of the random
# augmentation, made under the run's seed, and reused by every run with that seed. Entries are
# written to a unique temporary name and renamed into place, so concurrent writers (two commands,
# or the workers of one multi-worker run) never expose a partial file: the last rename of identical
# content wins. A run then joins its rows (features + labels, in its order) into one flat file that
# ``feature_dataset`` streams, as before.

STORE_VERSION = 1


def weights_fingerprint(model) -> str:
    """A short hash of every weight value of ``model``: any change of weights changes the features."""
    digest = hashlib.blake2b(digest_size=12)
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{weight.path}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def model_key(bundle, *, backbone: str, image_size, pooling: str, precision: str) -> dict:
    """Everything besides the image that determines a feature vector."""
    return {
        "version": STORE_VERSION,
        "backbone": backbone,
        "weights": weights_fingerprint(bundle.feature_extractor),
        "image_size": list(image_size),
        "pooling": pooling,
        "precision": precision,
    }


def store_key(bundle, cfg: RunConfig) -> dict:
    """The store's key for a run's model under the current Keras precision policy (the one key function)."""
    # Keras only once features are computed: `vinted cache status/clear` reads the store without TensorFlow.
    import keras  # noqa: PLC0415

    return model_key(
        bundle,
        backbone=cfg.model.backbone,
        image_size=cfg.model.image_size,
        pooling=cfg.model.pooling,
        precision=keras.mixed_precision.global_policy().name,
    )


def open_store(bundle, cfg: RunConfig) -> FeatureStore:
    """The shared, content-addressed feature store for this run's model."""
    return FeatureStore(cfg.feature_cache_root, store_key(bundle, cfg))


def cached_views(cfg: RunConfig) -> int:
    """Augmented views cached per training image: none when the model does not augment."""
    return cfg.train.cached_augmented_views if cfg.model.augment else 0


def partial_view_rows(cfg: RunConfig, codes) -> np.ndarray:
    """The training rows (stratified by category) cached with one augmented view more: ``partial_view_share``."""
    # data.splits imports pandas and scikit-learn: `vinted cache status` imports this module without them.
    from .data.splits import stratified_subsample  # noqa: PLC0415

    count = round(cfg.train.partial_view_share * len(codes)) if cfg.model.augment else 0
    return stratified_subsample(codes, count, cfg.seed) if count else np.zeros(0, np.int64)


def file_hash(path: str | Path) -> str:
    """The same content hash ``data.check_images`` records (blake2b-128 of the file's bytes)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


class FeatureStore:
    """Per-image feature vectors for one model key; counts what it computed and what it reused."""

    def __init__(self, root: str | Path, key: dict):
        self.root, self.key = Path(root), dict(key)
        self.folder = (
            self.root / hashlib.blake2b(json.dumps(self.key, sort_keys=True).encode(), digest_size=8).hexdigest()
        )
        self.computed = self.reused = 0

    def entry(self, image_hash: str, view: int, seed: int) -> Path:
        name = f"{image_hash}.v{view}" + (f".s{seed}" if view else "") + ".f32"
        return self.folder / image_hash[:2] / name

    def get(self, image_hash: str, view: int, seed: int) -> np.ndarray | None:
        try:
            return np.fromfile(self.entry(image_hash, view, seed), RECORD_DTYPE)
        except FileNotFoundError:
            return None

    def require(self, image_hash: str, view: int, seed: int) -> np.ndarray:
        """``get`` for an entry this command computed or counted on: its absence is an error naming it."""
        vector = self.get(image_hash, view, seed)
        if vector is None:
            raise FileNotFoundError(
                f"feature store entry {self.entry(image_hash, view, seed)} vanished while in use "
                "(another command cleared the store or its size cap is too small)"
            )
        return vector

    def put(self, image_hash: str, view: int, seed: int, vector: np.ndarray) -> None:
        target = self.entry(image_hash, view, seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            np.ascontiguousarray(vector, RECORD_DTYPE).tofile(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def write_key(self) -> None:
        if not (self.folder / "key.json").is_file():
            write_json(self.folder / "key.json", self.key)


def store_status(root: str | Path) -> list[dict]:
    """One row per model key in the store: the key, its entries and bytes (for ``vinted cache status``)."""
    rows = []
    for folder in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        entries = [f for f in folder.glob("*/*.f32")]
        key_file = folder / "key.json"
        rows.append(
            {
                "folder": folder.name,
                "key": json.loads(key_file.read_text()) if key_file.is_file() else None,
                "entries": len(entries),
                "bytes": sum(f.stat().st_size for f in entries),
            }
        )
    return rows


def clear_store(root: str | Path) -> tuple[int, int]:
    """Delete every entry (and key folder) under ``root``; return (entries, bytes) removed."""
    entries = list(Path(root).glob("*/*/*.f32"))
    removed = sum(f.stat().st_size for f in entries)
    for folder in (p for p in Path(root).glob("*") if p.is_dir()):
        shutil.rmtree(folder, ignore_errors=True)
    return len(entries), removed


def enforce_size_cap(root: str | Path, max_bytes: int) -> tuple[int, int]:
    """Delete the least recently written entries until the store holds ``max_bytes`` at most.

    Returns (entries, bytes) removed.
    """
    entries = []
    for path in Path(root).glob("*/*/*.f32"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # another process removed it meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = freed = 0
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total - freed <= max_bytes:
            break
        path.unlink(missing_ok=True)
        removed, freed = removed + 1, freed + size
    if removed:
        log.info(
            "feature store %s over its %.2f GiB cap: removed %d oldest entries (%.1f MiB)",
            root,
            max_bytes / 2**30,
            removed,
            freed / 2**20,
        )
    return removed, freed


def compute_missing(
    bundle,
    store: FeatureStore,
    paths: list[str],
    hashes: list[str],
    *,
    views: int,
    seed: int,
    image_size,
    batch_size: int,
    desc: str,
    first_view: int = 0,
) -> None:
    """Run the backbone over the images whose entries (clean view, then ``views`` augmented ones) are missing.

    ``first_view`` > 0 looks only at the views from that one on (a partial view's second pass).
    """
    # TensorFlow only when features are computed: `vinted cache status/clear` imports this module without it.
    import tensorflow as tf  # noqa: PLC0415

    wanted = range(first_view, 1 + (views if bundle.augmenter is not None else 0))
    missing_views = {i: [v for v in wanted if not store.entry(hashes[i], v, seed).is_file()] for i in range(len(paths))}
    todo = [i for i, missing in missing_views.items() if missing]
    store.reused += sum(len(wanted) - len(missing_views[i]) for i in range(len(paths)))
    if not todo:
        return
    store.write_key()
    extract = tf.function(lambda x: bundle.feature_extractor(x, training=False), reduce_retracing=True)
    # Traced on first use only: views > 0 are wanted only when the bundle has an augmenter.
    augment = tf.function(lambda x: bundle.augmenter(x, training=True), reduce_retracing=True)
    images = pipeline_images([paths[i] for i in todo], image_size=image_size, batch_size=batch_size)
    batches = -(-len(todo) // batch_size)
    done = 0
    for batch in progress.bar(
        images, total=batches, desc=f"{desc}: backbone features of {len(todo)} image(s)", unit="batch"
    ):
        rows = todo[done : done + int(batch.shape[0])]
        done += len(rows)
        for view in sorted({v for i in rows for v in missing_views[i]}):
            features = np.asarray(extract(batch if view == 0 else augment(batch)), RECORD_DTYPE)
            for i, vector in zip(rows, features, strict=True):
                if view in missing_views[i]:
                    store.put(hashes[i], view, seed, vector)
                    store.computed += 1


def pipeline_images(paths: list[str], *, image_size, batch_size: int):
    # pipeline imports TensorFlow: `vinted cache status/clear` imports this module without it.
    from . import pipeline  # noqa: PLC0415

    return pipeline.make_dataset(paths, image_size=image_size, batch_size=batch_size)


def join_rows(
    store: FeatureStore,
    path: Path,
    hashes: list[str],
    codes: np.ndarray,
    tags: np.ndarray,
    *,
    views: int,
    seed: int,
    order: np.ndarray | None = None,
    key: dict | None = None,
    partial: np.ndarray | None = None,
) -> FeatureCache:
    """The flat file ``feature_dataset`` reads: view by view, each image's features + code + tags, in ``order``.

    The rows listed in ``partial`` add augmented view ``views + 1`` after the whole views.
    """
    order = np.arange(len(hashes)) if order is None else np.asarray(order)
    extra = set(np.asarray(partial if partial is not None else [], np.int64).tolist())
    labels = np.concatenate([np.asarray(codes, RECORD_DTYPE)[:, None], np.asarray(tags, RECORD_DTYPE)], axis=1)
    written = [(view, i) for view in range(1 + views) for i in order]
    written += [(views + 1, i) for i in order if i in extra]
    dim = None
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        for view, i in written:
            vector = store.require(hashes[i], view, seed)
            if dim is None:
                dim = len(vector)
            elif len(vector) != dim:
                raise ValueError(
                    f"feature store entry {store.entry(hashes[i], view, seed)} holds {len(vector)} "
                    f"values, expected {dim}: delete it (vinted cache clear)"
                )
            out.write(np.concatenate([vector, labels[i]]).tobytes())
    if dim is None:
        raise ValueError(f"no rows to join into {path}")
    cache = FeatureCache(path, len(written), int(dim), labels.shape[1] - 1, dict(key or {}))
    write_json(_meta_path(path), {k: v for k, v in asdict(cache).items() if k != "path"})
    return cache


def cached_features(
    bundle,
    store: FeatureStore,
    path: Path,
    paths: list[str],
    hashes: list[str],
    codes,
    tags,
    *,
    views: int,
    seed: int,
    image_size,
    batch_size: int,
    order=None,
    partial=None,
    desc: str,
) -> FeatureCache:
    """Compute what the store lacks, then join this split's rows into ``path``.

    ``partial``: indices of the rows that also get augmented view ``views + 1`` (none without an augmenter).
    """
    views = views if bundle.augmenter is not None else 0
    partial = np.asarray(partial if partial is not None and bundle.augmenter is not None else [], np.int64)
    settings = {"seed": seed, "image_size": image_size, "batch_size": batch_size}
    compute_missing(bundle, store, paths, hashes, views=views, desc=desc, **settings)
    if partial.size:  # a second pass over these rows, for the one view more
        subset = partial.tolist()
        compute_missing(
            bundle,
            store,
            [paths[i] for i in subset],
            [hashes[i] for i in subset],
            views=views + 1,
            first_view=views + 1,
            desc=f"{desc} (view {views + 1} of {partial.size})",
            **settings,
        )
    key = {"store": store.folder.name, "views": views, "seed": seed, "rows": rows_digest(hashes, codes, tags, order)}
    if partial.size:
        key["partial"] = hashlib.blake2b(np.sort(partial).tobytes(), digest_size=12).hexdigest()
    if (joined := load_feature_cache(path, key)) is not None:  # the same rows already joined (a rerun)
        return joined
    return join_rows(store, path, hashes, codes, tags, views=views, seed=seed, order=order, key=key, partial=partial)


def rows_digest(hashes: list[str], codes, tags, order=None) -> str:
    """What a joined file holds, row by row: images, labels and order."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update("\n".join(hashes).encode())
    for array in (
        np.asarray(codes, np.int64),
        np.asarray(tags, np.float32),
        np.arange(len(hashes)) if order is None else np.asarray(order, np.int64),
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
