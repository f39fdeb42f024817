"""The set-up that ``train``, ``search`` and ``cv`` share: seed, precision, data, model, features.

Each command then adds only what is its own (train's two phases and run folder, the search's
Optuna loop, CV's fold loop). The order is part of reproducibility: seeding first, then the
precision policy (it decides the model's dtypes), then the data split, then the model build;
features are cached when a command asks for them, from the one shared store (``features.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import data
from ..config import RunConfig
from ..contract import TAGS_OUTPUT
from ..features import (
    FeatureCache,
    FeatureStore,
    cached_features,
    cached_views,
    compute_missing,
    enforce_size_cap,
    file_hash,
    open_store,
    partial_view_rows,
)
from ..model import ModelBundle, build_model, compile_model
from ..precision import detect_hardware, resolve_precision, set_precision
from ..utils import set_seed

log = logging.getLogger(__name__)


def class_weights(cfg: RunConfig, codes: np.ndarray, n_categories: int) -> np.ndarray | None:
    """Per-category loss weights balanced over ``codes`` when ``data.class_weights`` is on, else None."""
    return data.class_weights(codes, n_categories) if cfg.data.class_weights else None


def compile_for(keras_model, cfg: RunConfig, prepared: data.PreparedData, learning_rate) -> None:
    """Compile the full model or the head with the run's outputs, loss weights and label smoothing."""
    compile_model(
        keras_model,
        category_output=cfg.data.category_column,
        n_tags=len(prepared.vocab.tags),
        tag_names=list(prepared.vocab.tags),
        learning_rate=learning_rate,
        loss_weights=cfg.train.loss_weights,
        label_smoothing=cfg.train.label_smoothing,
    )


def image_hashes(prepared: data.PreparedData, split: str, id_column: str) -> list[str]:
    """Each row's image content hash (recorded by the image check; hashed here where it was not)."""
    known = prepared.image_report.hashes
    frame = prepared.frames[split]
    return [known.get(uuid) or file_hash(path) for uuid, path in zip(frame[id_column], frame["path"], strict=True)]


def _extraction_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run's arguments to ``features.cached_features`` besides the rows: seed, image size, batch size."""
    return {"seed": cfg.seed, "image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size}


def _write_order(cfg: RunConfig, split: str, n_images: int, rows: int) -> np.ndarray | None:
    """The order a split's ``n_images`` are joined in (None: as they are), for ``rows`` rows in all.

    When the rows fit the reader's shuffle buffer, every epoch is an exact full shuffle. When they
    do not, the training rows are written in a random order, so that the bounded buffer draws from
    rows already shuffled.
    """
    if split == "train" and rows > cfg.train.feature_shuffle_buffer:
        return np.random.default_rng(cfg.seed).permutation(n_images)
    return None


def cache_splits(
    bundle, cfg: RunConfig, prepared: data.PreparedData, folder: Path, counts: dict | None = None
) -> dict[str, FeatureCache]:
    """Frozen-backbone features of train (plus augmented views) and val, joined into files in ``folder``.

    The vectors come from the shared store: only images it lacks go through the backbone, so
    phase 1, the hyperparameter search, CV and later runs on the same images compute each
    image's features once. ``counts`` (if given) receives how many were computed and reused.
    """
    started = time.perf_counter()
    store = open_store(bundle, cfg)
    views = cached_views(cfg)
    partial = partial_view_rows(cfg, prepared.codes("train"))
    more = f" (+ 1 for {partial.size} of them)" if partial.size else ""
    n_train, n_val = len(prepared.paths("train")), len(prepared.paths("val"))
    sizes = f"{n_train} train image(s) x {1 + views} view(s){more}, {n_val} val"
    log.info("caching backbone features: %s (store %s)", sizes, store.folder)
    caches = {}
    for split, split_views in (("train", views), ("val", 0)):
        hashes = image_hashes(prepared, split, cfg.data.id_column)
        split_partial = partial if split == "train" else np.zeros(0, np.int64)
        split_rows = len(hashes) * (1 + split_views) + split_partial.size
        caches[split] = cached_features(
            bundle,
            store,
            folder / f"{split}.f32",
            prepared.paths(split),
            hashes,
            prepared.codes(split),
            prepared.tags(split),
            views=split_views,
            order=_write_order(cfg, split, len(hashes), split_rows),
            partial=split_partial,
            desc=f"caching {split}",
            **_extraction_settings(cfg),
        )
    enforce_size_cap(cfg.feature_cache_root, int(cfg.train.feature_cache_max_gb * 2**30))
    rows = {s: c.rows for s, c in caches.items()}
    log.info(
        "cached features: %s rows, dim %d in %.1fs (%d vector(s) computed, %d reused from the store)",
        rows,
        caches["train"].feature_dim,
        time.perf_counter() - started,
        store.computed,
        store.reused,
    )
    if counts is not None:
        counts["computed"] = counts.get("computed", 0) + store.computed
        counts["reused"] = counts.get("reused", 0) + store.reused
        counts["store"] = str(store.folder)
    return caches


def store_scorer(bundle: ModelBundle, cfg: RunConfig, prepared: data.PreparedData, counts: dict):
    """``split -> (category probs, tag probs)`` from the head on the store's clean-view features.

    Only for a model whose backbone is the frozen one the store was filled with (phase 1's weights):
    then the head on stored features is the model on the images, val's features are already there
    from caching, and holdout's stay for later runs. ``counts`` receives what was computed and reused.
    """
    store = open_store(bundle, cfg)
    category = cfg.data.category_column

    def score(split: str) -> tuple[np.ndarray, np.ndarray]:
        hashes = image_hashes(prepared, split, cfg.data.id_column)
        compute_missing(
            bundle, store, prepared.paths(split), hashes, views=0, desc=f"scoring {split}", **_extraction_settings(cfg)
        )
        features = np.stack([store.require(image_hash, 0, cfg.seed) for image_hash in hashes])
        counts.update(computed=store.computed, reused=store.reused)
        out = bundle.head.predict(features, batch_size=cfg.train.batch_size, verbose=0)
        return np.asarray(out[category], np.float32), np.asarray(out[TAGS_OUTPUT], np.float32)

    return score


@dataclasses.dataclass
class Experiment:
    """One run's resolved set-up: the config, the precision it trains in, its data and (once built) its model."""

    cfg: RunConfig
    hardware: dict[str, Any]
    policy: str
    prepared: data.PreparedData
    bundle: ModelBundle | None = None

    @classmethod
    def start(cls, cfg: RunConfig) -> Experiment:
        """Seed everything, set the precision policy, prepare the data (splits, duplicates, images)."""
        set_seed(cfg.seed, deterministic=cfg.train.deterministic)
        hardware = detect_hardware()
        policy = resolve_precision(cfg.train.precision, hardware)
        set_precision(policy)
        log.info("precision policy: %s", policy)
        prepared = data.prepare(cfg.data, cfg.seed)
        log.info("data: %s; splits %s", prepared.duplicates, {k: len(v) for k, v in prepared.frames.items()})
        return cls(cfg, hardware, policy, prepared)

    @property
    def categories(self) -> list[str]:
        return list(self.prepared.vocab.categories)

    @property
    def tag_names(self) -> list[str]:
        return list(self.prepared.vocab.tags)

    def build_model(self) -> ModelBundle:
        """Build the model (under whatever distribution scope the caller holds)."""
        self.bundle = build_model(
            self.cfg.model, self.categories, self.tag_names, category_output=self.cfg.data.category_column
        )
        log.info("weights source: %s", self.bundle.weights_source)
        return self.bundle

    def release_model(self) -> None:
        """Drop the full model once only heads on cached features are trained (its memory goes back)."""
        self.bundle = None

    def replaced(self, **changes: Any) -> Experiment:
        """A copy with a planned ``cfg`` or a subsampled ``prepared`` (the time budget's)."""
        return dataclasses.replace(self, **changes)

    def class_weights(self, cfg: RunConfig | None = None) -> np.ndarray | None:
        """Training-split class weights when ``cfg`` (default: the run's) turns them on."""
        return class_weights(self.cfg if cfg is None else cfg, self.prepared.codes("train"), len(self.categories))

    def cache_splits(self, folder: Path, counts: dict | None = None) -> dict[str, FeatureCache]:
        return cache_splits(self.built(), self.cfg, self.prepared, folder, counts=counts)

    def cache_rows(
        self, path: Path, paths: list[str], hashes: list[str], codes, tags, *, desc: str
    ) -> tuple[FeatureCache, FeatureStore]:
        """Features of arbitrary rows (clean view plus the configured augmented views), e.g. CV's pool."""
        bundle = self.built()
        store = open_store(bundle, self.cfg)
        views = cached_views(self.cfg)
        settings = _extraction_settings(self.cfg)
        return cached_features(
            bundle, store, path, paths, hashes, codes, tags, views=views, desc=desc, **settings
        ), store

    def built(self) -> ModelBundle:
        """The model bundle, which ``build_model`` must have made."""
        if self.bundle is None:
            raise RuntimeError("build the model first (Experiment.build_model)")
        return self.bundle
