"""Duplicate groups (same uuid or same image bytes), duplicate-aware splits, and class balancing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ..config import DataConfig
from ..utils import atomic_path
from .images import ImageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "holdout")


def duplicate_groups(labels: pd.DataFrame, cfg: DataConfig, hashes: dict[str, str] | None = None) -> pd.Series:
    """Group rows that show the same item: same uuid, or identical image bytes.

    Returns one integer group id per row (aligned to ``labels.index``). Rows of a
    group must stay on one side of every split.
    """
    ids = labels[cfg.id_column].tolist()
    parent: dict[str, str] = {uuid: uuid for uuid in ids}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    first_with_hash: dict[str, str] = {}
    for uuid, digest in (hashes or {}).items():
        if uuid not in parent:
            continue
        if digest in first_with_hash:
            parent[root(uuid)] = root(first_with_hash[digest])
        else:
            first_with_hash[digest] = uuid
    roots = [root(uuid) for uuid in ids]
    codes, _ = pd.factorize(pd.Series(roots))
    return pd.Series(codes, index=labels.index, name="group")


def duplicate_report(labels: pd.DataFrame, cfg: DataConfig, groups: pd.Series) -> dict:
    """Counts for the run log and the notebook."""
    exact_rows = int(labels.duplicated().sum())
    repeated_ids = int(labels[cfg.id_column].duplicated().sum())
    unique_ids = labels.drop_duplicates(cfg.id_column)
    content_dups = int(groups.loc[unique_ids.index].duplicated().sum())
    return {
        "rows": len(labels),
        "exact_duplicate_rows": exact_rows,
        "repeated_uuids": repeated_ids,
        "same_image_different_uuid": content_dups,
        "groups": int(groups.nunique()),
    }


def make_splits(labels: pd.DataFrame, groups: pd.Series, cfg: DataConfig, seed: int) -> pd.Series:
    """Seeded, category-stratified, duplicate-aware train/val/holdout assignment per row.

    Splitting happens on duplicate groups (one representative label each), so no
    uuid or image content appears on two sides.
    """
    reps = labels.assign(group=groups.values).drop_duplicates("group")
    strata = reps[cfg.category_column]
    # Categories too rare to stratify are still split, just not stratified.
    counts = strata.value_counts()
    rare = strata.map(counts) < 3
    strata = strata.where(~rare, "__rare__")
    holdout_n = cfg.holdout_fraction
    rest, holdout = train_test_split(reps["group"], test_size=holdout_n, random_state=seed, stratify=strata)
    val_share = cfg.val_fraction / (1.0 - cfg.holdout_fraction)
    rest_strata = strata.loc[rest.index]
    if (rest_strata.value_counts() < 2).any():
        rest_strata = None
    train, val = train_test_split(rest, test_size=val_share, random_state=seed, stratify=rest_strata)
    by_group = {**{g: "train" for g in train}, **{g: "val" for g in val}, **{g: "holdout" for g in holdout}}
    return groups.map(by_group).rename("split")


def splits_path(cfg: DataConfig, seed: int) -> Path:
    stem = Path(cfg.splits_file).stem
    return Path(cfg.data_dir) / f"{stem}_seed{seed}.csv"


def load_or_make_splits(labels: pd.DataFrame, groups: pd.Series, cfg: DataConfig, seed: int) -> pd.DataFrame:
    """Reuse the splits file next to the data if it matches these labels, else write a new one.

    The file has one row per unique uuid: ``uuid, split, group``.
    """
    path = splits_path(cfg, seed)
    unique = labels.assign(group=groups.values).drop_duplicates(cfg.id_column)
    if path.is_file():
        saved = pd.read_csv(path, dtype={cfg.id_column: str, "split": str, "group": np.int64})
        if set(saved[cfg.id_column]) == set(unique[cfg.id_column]) and saved["split"].isin(SPLITS).all():
            log.info("reusing splits from %s", path)
            return saved
        raise ImageError(f"splits file {path} does not match the labels (different uuids); delete it to re-split")
    split = make_splits(labels, groups, cfg, seed)
    table = pd.DataFrame(
        {
            cfg.id_column: unique[cfg.id_column].values,
            "split": split.loc[unique.index].values,
            "group": unique["group"].values,
        }
    )
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    log.info("wrote splits to %s", path)
    return table


def downsample(frame: pd.DataFrame, cfg: DataConfig, seed: int) -> pd.DataFrame:
    """Cap each category at ``downsample_max_per_category`` rows (seeded); others untouched."""
    cap = cfg.downsample_max_per_category
    if cap is None:
        return frame
    parts = []
    for _, part in frame.groupby(cfg.category_column, sort=True):
        parts.append(part.sample(n=cap, random_state=seed) if len(part) > cap else part)
    return pd.concat(parts).loc[lambda f: f.index.sort_values()]


def class_weights(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced weights ``n / (k * count)``; absent classes get weight 0."""
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(codes) / (present.sum() * counts[present])
    return weights


def stratified_subsample(codes: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted row indices of ``size`` rows keeping each category's share (largest remainder), >= 1 each.

    The same ``codes``, ``size`` and ``seed`` give the same rows on every worker.
    """
    codes = np.asarray(codes)
    if not 1 <= size <= len(codes):
        raise ValueError(f"subsample size {size} must be between 1 and the {len(codes)} training rows")
    categories, counts = np.unique(codes, return_counts=True)
    exact = counts * size / len(codes)
    take = np.minimum(counts, np.maximum(np.floor(exact).astype(int), 1 if size >= len(categories) else 0))
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")  # largest remainders first
    for index in np.concatenate([order, order]):
        if take.sum() >= size:
            break
        if take[index] < counts[index]:
            take[index] += 1
    while take.sum() > size:  # the >= 1 floor overshot: trim the largest categories
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(codes == category), n, replace=False)
        for category, n in zip(categories, take, strict=True)
        if n > 0
    ]
    return np.sort(np.concatenate(chosen))
