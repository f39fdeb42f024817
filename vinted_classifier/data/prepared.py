"""The whole preparation: labels, images, duplicates, splits and downsampling in one call; notebook tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..contract import DEFAULT_CATEGORY_COLUMN
from .images import ImageReport, check_images, enforce_image_policy
from .schema import Vocabulary, read_labels
from .splits import SPLITS, downsample, duplicate_groups, duplicate_report, load_or_make_splits, splits_path


@dataclass
class PreparedData:
    """Everything training needs, resolved once: rows per split with image paths and codes."""

    vocab: Vocabulary
    frames: dict[str, pd.DataFrame]  # split -> rows with columns: uuid, path, code, tags..., extras
    duplicates: dict
    image_report: ImageReport
    splits_file: Path

    def tags(self, split: str) -> np.ndarray:
        return self.frames[split][list(self.vocab.tags)].to_numpy(dtype=np.float32)

    def codes(self, split: str) -> np.ndarray:
        return self.frames[split]["code"].to_numpy(dtype=np.int64)

    def paths(self, split: str) -> list[str]:
        return self.frames[split]["path"].tolist()


def prepare(cfg: DataConfig, seed: int) -> PreparedData:
    """Read, validate, check images, de-duplicate, split and (optionally) downsample."""
    labels = read_labels(cfg)
    vocab = Vocabulary.from_labels(labels, cfg)
    report = check_images(labels[cfg.id_column].tolist(), cfg, decode=True)
    enforce_image_policy(report, cfg, what=str(Path(cfg.data_dir) / cfg.labels_file))
    groups = duplicate_groups(labels, cfg, report.hashes if cfg.hash_images else None)
    dup = duplicate_report(labels, cfg, groups)
    table = load_or_make_splits(labels, groups, cfg, seed)
    # Exact repeats add nothing but bias: keep one row per uuid.
    unique = labels.drop_duplicates(cfg.id_column).copy()
    unique = unique[~unique[cfg.id_column].isin(report.bad)]
    unique = unique.merge(table[[cfg.id_column, "split"]], on=cfg.id_column, how="left", validate="one_to_one")
    unique["path"] = unique[cfg.id_column].map(report.paths)
    unique["code"] = vocab.encode(unique[cfg.category_column])
    frames = {name: unique[unique["split"] == name].reset_index(drop=True) for name in SPLITS}
    frames["train"] = downsample(frames["train"], cfg, seed).reset_index(drop=True)
    return PreparedData(
        vocab=vocab, frames=frames, duplicates=dup, image_report=report, splits_file=splits_path(cfg, seed)
    )


def split_table(prepared: PreparedData, category_column: str = DEFAULT_CATEGORY_COLUMN) -> pd.DataFrame:
    """Rows per category and split: shows stratification and the effect of downsampling."""
    rows = pd.concat([f.assign(split=name) for name, f in prepared.frames.items()], ignore_index=True)
    table = pd.crosstab(rows[category_column], rows["split"], margins=True)
    return table[[*prepared.frames, "All"]]  # train, val, holdout order


def downsample_effect(prepared: PreparedData, cfg: DataConfig, seed: int, cap: int | None = None) -> pd.DataFrame:
    """Training rows per category as configured and with ``downsample_max_per_category=cap``.

    ``cap`` defaults to the second-largest category, i.e. trimming only the dominant one (the seed's choice).
    """
    column, train = cfg.category_column, prepared.frames["train"]
    counts = train[column].value_counts()
    cap = int(cap if cap is not None else counts.iloc[min(1, len(counts) - 1)])
    capped = downsample(train, cfg.model_copy(update={"downsample_max_per_category": cap}), seed)
    table = pd.DataFrame({"as configured": counts, f"cap={cap}": capped[column].value_counts()}).fillna(0).astype(int)
    table["share as configured"] = (table["as configured"] / table["as configured"].sum()).round(3)
    table[f"share cap={cap}"] = (table[f"cap={cap}"] / table[f"cap={cap}"].sum()).round(3)
    return table.rename_axis(column)
