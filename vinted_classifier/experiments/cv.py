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

log = logging.getLogger(__name__)


def grouped_folds(codes: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row: groups never straddle folds; categories stratified as far as groups allow."""
    from sklearn.model_selection import StratifiedGroupKFold

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


def _pool_groups(prepared, id_column: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    import pandas as pd

    table = pd.read_csv(prepared.splits_file, dtype={id_column: str})
    group_of = dict(zip(table[id_column], table["group"]))
    frame = pd.concat([prepared.frames["train"], prepared.frames["val"]], ignore_index=True)
    groups = frame[id_column].map(group_of)
    if groups.isna().any():
        raise ValueError(f"{prepared.splits_file}: no group for uuid(s) {frame.loc[groups.isna(), id_column].head().tolist()}")
    tags = frame[list(prepared.vocab.tags)].to_numpy(np.float32)
    return frame["path"].tolist(), frame["code"].to_numpy(np.int64), tags, groups.to_numpy(np.int64)


def run_cv(cfg, folds: int, *, name: str = "cv") -> CVResult:
    """K-fold CV of the head recipe under ``<output_dir>/<name>/``; writes ``cv.json`` and ``cv.md``."""
    import tensorflow as tf

    from .. import data
    from ..evaluate import evaluate_predictions, tune_thresholds
    from ..features import cached_features
    from ..train import feature_store, image_hashes
    from ..model import build_model
    from ..precision import resolve_precision, set_precision
    from ..utils import set_seed, write_json
    from .heads import fit_head, read_cache_arrays
    from .tracking import log_config, numeric_leaves, tracked_run

    folder = Path(cfg.output_dir) / name
    set_seed(cfg.seed, deterministic=cfg.train.deterministic)
    set_precision(resolve_precision(cfg.train.precision))
    prepared = data.prepare(cfg.data, cfg.seed)
    if cfg.data.downsample_max_per_category is not None:
        raise ValueError("data.downsample_max_per_category: cross-validation needs every pool row; set it to null")
    paths, codes, tags, groups = _pool_groups(prepared, cfg.data.id_column)
    fold_of = grouped_folds(codes, groups, folds, cfg.seed)
    categories, tag_names = list(prepared.vocab.categories), list(prepared.vocab.tags)
    bundle = build_model(cfg.model, categories, tag_names, category_output=cfg.data.category_column)
    views = cfg.train.cached_augmented_views if cfg.model.augment else 0
    # The pool is train + val: the shared store already holds their features after a train or search.
    store = feature_store(bundle, cfg)
    hashes = [*image_hashes(prepared, "train", cfg.data.id_column), *image_hashes(prepared, "val", cfg.data.id_column)]
    cache = cached_features(bundle, store, folder / "feature_cache" / "pool.f32", paths, hashes, codes, tags,
                            views=views, seed=cfg.seed, image_size=cfg.model.image_size,
                            batch_size=cfg.train.batch_size, desc="caching the cv pool")
    log.info("cv pool features: %d computed, %d reused from the store", store.computed, store.reused)
    del bundle
    features, cached_codes, _ = read_cache_arrays(cache)
    n = len(paths)
    features = features.reshape(1 + views if cache.rows == n * (1 + views) else 1, n, -1)
    if not np.array_equal(cached_codes[:n], codes):
        raise ValueError("feature cache rows are not in pool order (delete the cv feature_cache folder)")
    per_class = data.class_weights(codes, len(categories)) if cfg.data.class_weights else None

    results = []
    with tracked_run(cfg, run_name=name, tags={"vinted.kind": "cv"}) as parent:
        if parent is not None:
            import mlflow

            log_config(mlflow, cfg)
            mlflow.log_param("folds", folds)
        for fold in range(folds):
            test, inner = fold_of == fold, fold_of == (fold + 1) % folds
            train = ~(test | inner)
            x = features[:, train].reshape(-1, features.shape[-1])
            y = {cfg.data.category_column: np.tile(codes[train], features.shape[0]), "tags": np.tile(tags[train], (features.shape[0], 1))}
            inputs = (x, y) if per_class is None else (
                x, y, {cfg.data.category_column: per_class[y[cfg.data.category_column]].astype(np.float32),
                       "tags": np.ones(len(x), np.float32)})
            train_data = (tf.data.Dataset.from_tensor_slices(inputs).shuffle(len(x), seed=cfg.seed)
                          .batch(cfg.train.batch_size))
            fit = fit_head(cfg, train_data, (features[0, inner], codes[inner], tags[inner]),
                           categories=categories, tag_names=tag_names)
            thresholds = tune_thresholds(tags[inner].astype(np.int64), fit.p_tags)
            out = fit.head.predict(features[0, test], batch_size=1024, verbose=0)
            scored = evaluate_predictions(codes[test], np.asarray(out[cfg.data.category_column]),
                                          tags[test].astype(np.int64), np.asarray(out["tags"]),
                                          categories=categories, tag_names=tag_names, thresholds=thresholds)
            row = {"fold": fold, "n_test": int(test.sum()), "n_train_images": int(train.sum()),
                   "top1": scored["top1_accuracy"], "top2": scored["top2_accuracy"],
                   "tag_macro_f1": scored["tags"]["macro_f1"], "best_epoch": fit.best_epoch + 1,
                   **{f"f1 {tag}": scored["tags"]["per_tag"][tag]["f1"] for tag in tag_names}}
            results.append(row)
            log.info("fold %d/%d: %s", fold + 1, folds, row)
            if parent is not None:
                with tracked_run(cfg, run_name=f"{name}-fold-{fold}"):
                    mlflow.log_metrics(numeric_leaves(row))
        metric_names = ["top1", "top2", "tag_macro_f1", *[f"f1 {tag}" for tag in tag_names]]
        summary = {m: mean_std([r[m] for r in results if r[m] is not None]) for m in metric_names}
        result = CVResult(folder, results, summary)
        write_json(folder / "cv.json", {"folds": results, "summary": {m: {"mean": a, "std": b} for m, (a, b) in summary.items()},
                                        "k": folds, "pool_rows": n, "seed": cfg.seed})
        (folder / "cv.md").write_text(f"{folds}-fold grouped CV, {n} train+val rows, seed {cfg.seed}\n\n"
                                      + result.table() + "\n")
        if parent is not None:
            mlflow.log_metrics({f"{m}_mean".replace(" ", "_"): a for m, (a, _) in summary.items()})
            mlflow.log_metrics({f"{m}_std".replace(" ", "_"): b for m, (_, b) in summary.items()})
            mlflow.log_artifact(str(folder / "cv.json"))
            mlflow.log_artifact(str(folder / "cv.md"))
    return result
