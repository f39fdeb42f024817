"""``vinted cv``: grouped, stratified k-fold cross-validation of the head recipe on one feature cache.

The pool is the train + validation rows (the held-out split stays sealed for the final model).
Folds come from scikit-learn's ``StratifiedGroupKFold`` on the duplicate groups of ``data.py``
(same uuid or identical image bytes), so a group never straddles folds, stratified by category.
The backbone runs once over the pool (clean view plus ``train.cached_augmented_views``); for
fold ``i`` the head trains on every view of the other folds except fold ``i+1``, which picks the
epoch (early stopping) and the tag thresholds, and fold ``i`` is scored: top-1, top-2, per-tag F1
and macro F1. Reported as mean ± sample std over folds. Phase 2 (fine-tuning) is not part of it.

The per-fold arrays are held in memory (rows x views x feature dim x 4 bytes: ~40 MiB for the
demo set), unlike training's streamed cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.model_selection import StratifiedGroupKFold

from ..config import RunConfig
from ..contract import TAGS_OUTPUT
from ..evaluate.metrics import evaluate_predictions, tune_thresholds
from ..features import cached_views
from ..utils import write_json
from .heads import fit_head, read_cache_arrays
from .setup import Experiment, class_weights, image_hashes
from .tracking import Tracker

log = logging.getLogger(__name__)


def grouped_folds(codes: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row: groups never straddle folds; categories stratified as far as groups allow."""
    codes, groups = np.asarray(codes), np.asarray(groups)
    if len(codes) != len(groups):
        raise ValueError(f"{len(codes)} category codes but {len(groups)} group ids")
    n_groups = len(np.unique(groups))
    if k < 2 or k > n_groups:
        raise ValueError(f"--folds must be between 2 and the number of duplicate groups ({n_groups}), got {k}")
    fold = np.full(len(codes), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for index, (_, test) in enumerate(splitter.split(np.zeros(len(codes)), codes, groups)):
        fold[test] = index
    return fold


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


@dataclass
class CVResult:
    folder: Path
    folds: list[dict]
    summary: dict[str, tuple[float, float]]

    def table(self) -> str:
        lines = ["| metric | mean ± std |", "|---|---|"]
        lines += [f"| {name} | {mean:.3f} ± {std:.3f} |" for name, (mean, std) in self.summary.items()]
        return "\n".join(lines)


@dataclass
class _Pool:
    """The CV pool (train + val rows): images, labels, duplicate groups and each row's fold."""

    paths: list[str]
    hashes: list[str]
    codes: np.ndarray
    tags: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def _pool(experiment: Experiment) -> _Pool:
    prepared, id_column = experiment.prepared, experiment.cfg.data.id_column
    table = pd.read_csv(prepared.splits_file, dtype={id_column: str})
    group_of = dict(zip(table[id_column], table["group"], strict=True))
    frame = pd.concat([prepared.frames["train"], prepared.frames["val"]], ignore_index=True)
    groups = frame[id_column].map(group_of)
    if groups.isna().any():
        raise ValueError(
            f"{prepared.splits_file}: no group for uuid(s) {frame.loc[groups.isna(), id_column].head().tolist()}"
        )
    tags = frame[list(prepared.vocab.tags)].to_numpy(np.float32)
    hashes = [*image_hashes(prepared, "train", id_column), *image_hashes(prepared, "val", id_column)]
    return _Pool(frame["path"].tolist(), hashes, frame["code"].to_numpy(np.int64), tags, groups.to_numpy(np.int64))


def _pool_features(experiment: Experiment, pool: _Pool, folder: Path) -> np.ndarray:
    """Features of the pool, [views, rows, dim] (view 0 the clean one), from the shared store."""
    # The pool is train + val: the shared store already holds their features after a train or search.
    cache, store = experiment.cache_rows(
        folder / "feature_cache" / "pool.f32",
        pool.paths,
        pool.hashes,
        pool.codes,
        pool.tags,
        desc="caching the cv pool",
    )
    log.info("cv pool features: %d computed, %d reused from the store", store.computed, store.reused)
    features, cached_codes, _ = read_cache_arrays(cache)
    views, n = cached_views(experiment.cfg), len(pool)
    features = features.reshape(1 + views if cache.rows == n * (1 + views) else 1, n, -1)
    if not np.array_equal(cached_codes[:n], pool.codes):
        raise ValueError("feature cache rows are not in pool order (delete the cv feature_cache folder)")
    return features


def _fold_training_data(
    cfg: RunConfig, features: np.ndarray, pool: _Pool, train: np.ndarray, per_class: np.ndarray | None
):
    """Every view of the training rows, shuffled and batched (with sample weights when class weights are on)."""
    category = cfg.data.category_column
    x = features[:, train].reshape(-1, features.shape[-1])
    y = {
        category: np.tile(pool.codes[train], features.shape[0]),
        TAGS_OUTPUT: np.tile(pool.tags[train], (features.shape[0], 1)),
    }
    inputs = (
        (x, y)
        if per_class is None
        else (x, y, {category: per_class[y[category]].astype(np.float32), TAGS_OUTPUT: np.ones(len(x), np.float32)})
    )
    return tf.data.Dataset.from_tensor_slices(inputs).shuffle(len(x), seed=cfg.seed).batch(cfg.train.batch_size)


def _score_fold(
    experiment: Experiment,
    features: np.ndarray,
    pool: _Pool,
    fold_of: np.ndarray,
    fold: int,
    folds: int,
    per_class: np.ndarray | None,
) -> dict:
    """Train on the other folds but the next one (which picks the epoch and thresholds); score fold ``fold``."""
    cfg, tag_names = experiment.cfg, experiment.tag_names
    test, inner = fold_of == fold, fold_of == (fold + 1) % folds
    train = ~(test | inner)
    fit = fit_head(
        cfg,
        _fold_training_data(cfg, features, pool, train, per_class),
        (features[0, inner], pool.codes[inner], pool.tags[inner]),
        categories=experiment.categories,
        tag_names=tag_names,
    )
    thresholds = tune_thresholds(pool.tags[inner].astype(np.int64), fit.p_tags)
    out = fit.head.predict(features[0, test], batch_size=1024, verbose=0)
    scored = evaluate_predictions(
        pool.codes[test],
        np.asarray(out[cfg.data.category_column]),
        pool.tags[test].astype(np.int64),
        np.asarray(out[TAGS_OUTPUT]),
        categories=experiment.categories,
        tag_names=tag_names,
        thresholds=thresholds,
    )
    return {
        "fold": fold,
        "n_test": int(test.sum()),
        "n_train_images": int(train.sum()),
        "top1": scored["top1_accuracy"],
        "top2": scored["top2_accuracy"],
        "tag_macro_f1": scored["tags"]["macro_f1"],
        "best_epoch": fit.best_epoch + 1,
        **{f"f1 {tag}": scored["tags"]["per_tag"][tag]["f1"] for tag in tag_names},
    }


def _write_summary(cfg: RunConfig, folder: Path, results: list[dict], tag_names: list[str], pool_rows: int) -> CVResult:
    """``cv.json`` and ``cv.md``: every fold and the mean ± std of each metric."""
    folds = len(results)
    metric_names = ["top1", "top2", "tag_macro_f1", *[f"f1 {tag}" for tag in tag_names]]
    summary = {m: mean_std([r[m] for r in results if r[m] is not None]) for m in metric_names}
    result = CVResult(folder, results, summary)
    write_json(
        folder / "cv.json",
        {
            "folds": results,
            "summary": {m: {"mean": a, "std": b} for m, (a, b) in summary.items()},
            "k": folds,
            "pool_rows": pool_rows,
            "seed": cfg.seed,
        },
    )
    (folder / "cv.md").write_text(
        f"{folds}-fold grouped CV, {pool_rows} train+val rows, seed {cfg.seed}\n\n" + result.table() + "\n"
    )
    return result


def run_cv(cfg: RunConfig, folds: int, *, name: str = "cv") -> CVResult:
    """K-fold CV of the head recipe under ``<output_dir>/<name>/``; writes ``cv.json`` and ``cv.md``."""
    folder = Path(cfg.output_dir) / name
    experiment = Experiment.start(cfg)
    if cfg.data.downsample_max_per_category is not None:
        raise ValueError("data.downsample_max_per_category: cross-validation needs every pool row; set it to null")
    pool = _pool(experiment)
    fold_of = grouped_folds(pool.codes, pool.groups, folds, cfg.seed)
    experiment.build_model()
    features = _pool_features(experiment, pool, folder)
    experiment.release_model()  # only heads from here on
    per_class = class_weights(cfg, pool.codes, len(experiment.categories))
    tracker = Tracker(cfg)
    with tracker.run(name, kind="cv", params={"folds": folds}):
        results = []
        for fold in range(folds):
            row = _score_fold(experiment, features, pool, fold_of, fold, folds, per_class)
            results.append(row)
            log.info("fold %d/%d: %s", fold + 1, folds, row)
            tracker.log_fold(f"{name}-fold-{fold}", row)
        result = _write_summary(cfg, folder, results, experiment.tag_names, len(pool))
        tracker.finish(
            metrics={
                **{f"{m}_mean".replace(" ", "_"): a for m, (a, _) in result.summary.items()},
                **{f"{m}_std".replace(" ", "_"): b for m, (_, b) in result.summary.items()},
            },
            artifacts=[folder / "cv.json", folder / "cv.md"],
        )
    return result
