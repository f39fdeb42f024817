"""Vinted-layout labels: reading, schema validation, vocabularies, images, duplicates, splits.

Layout: ``data.parquet`` (labels), ``test.parquet`` (uuids to predict) and ``<uuid>.jpeg``
images in one folder. Vocabularies come from the data and the config, never from constants:
category codes are the sorted category names; tag columns are a configured list.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import progress
from .config import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "holdout")
_MAX_SHOWN = 5


class SchemaError(ValueError):
    """A labels file does not match the expected schema; the message names file, column, rows."""


class ImageError(ValueError):
    """Images are missing or cannot be decoded; the message lists the uuids."""


@dataclass(frozen=True)
class Vocabulary:
    """Category names (code = position in sorted order) and tag column names."""

    categories: tuple[str, ...]
    tags: tuple[str, ...]
    category_column: str = "cc3"

    @classmethod
    def from_labels(cls, labels: pd.DataFrame, cfg: DataConfig) -> "Vocabulary":
        names = tuple(sorted(labels[cfg.category_column].unique().tolist()))
        return cls(categories=names, tags=tuple(cfg.tag_columns), category_column=cfg.category_column)

    def encode(self, names: pd.Series) -> np.ndarray:
        index = {name: code for code, name in enumerate(self.categories)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise SchemaError(f"unknown {self.category_column} values {unknown[:_MAX_SHOWN]}; vocabulary is {list(self.categories)}")
        return names.map(index).to_numpy(dtype=np.int64)


def _show(frame: pd.DataFrame, mask: pd.Series, columns: list[str]) -> str:
    bad = frame.loc[mask, columns]
    more = f" (and {len(bad) - _MAX_SHOWN} more)" if len(bad) > _MAX_SHOWN else ""
    return f"{len(bad)} offending row(s){more}:\n{bad.head(_MAX_SHOWN).to_string()}"


def _is_string_column(series: pd.Series) -> bool:
    if pd.api.types.is_string_dtype(series.dtype) and not pd.api.types.is_object_dtype(series.dtype):
        return True
    return pd.api.types.is_object_dtype(series.dtype) and series.dropna().map(type).eq(str).all()


def validate_labels(frame: pd.DataFrame, cfg: DataConfig, *, source: str = "data.parquet") -> pd.DataFrame:
    """Check columns, dtypes, nulls, tag values; return the frame with tags as int64.

    Every error names the file, the column and shows a few offending rows.
    """
    id_col, cat_col = cfg.id_column, cfg.category_column
    required = [id_col, cat_col, *cfg.extra_columns, *cfg.tag_columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}")
    for column in required:
        nulls = frame[column].isna()
        if nulls.any():
            raise SchemaError(f"{source}: column {column!r} has nulls; " + _show(frame, nulls, [id_col, column]))
    for column in [id_col, cat_col, *cfg.extra_columns]:
        if not _is_string_column(frame[column]):
            raise SchemaError(f"{source}: column {column!r} must be strings, got dtype {frame[column].dtype}")
    for column in cfg.tag_columns:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series.dtype):
            continue
        if not pd.api.types.is_integer_dtype(series.dtype):
            raise SchemaError(f"{source}: tag column {column!r} must be integer 0/1, got dtype {series.dtype}")
        bad = ~series.isin([0, 1])
        if bad.any():
            raise SchemaError(f"{source}: tag column {column!r} has values other than 0/1; " + _show(frame, bad, [id_col, column]))
    empty = frame[id_col].str.len().eq(0)
    if empty.any():
        raise SchemaError(f"{source}: column {id_col!r} has empty ids; " + _show(frame, empty, [id_col]))
    # The same uuid with different labels cannot be trained on: refuse rather than guess.
    label_cols = [cat_col, *cfg.tag_columns]
    per_id = frame.drop_duplicates([id_col, *label_cols]).groupby(id_col).size()
    conflicting = per_id[per_id > 1].index
    if len(conflicting):
        mask = frame[id_col].isin(conflicting)
        raise SchemaError(f"{source}: uuid(s) with conflicting labels; " + _show(frame, mask, [id_col, *label_cols]))
    out = frame.copy()
    for column in cfg.tag_columns:
        out[column] = out[column].astype(np.int64)
    return out


def read_labels(cfg: DataConfig) -> pd.DataFrame:
    """Read and validate ``data.parquet``."""
    path = Path(cfg.data_dir) / cfg.labels_file
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path} (generate the demo set with `make demo-data`)")
    return validate_labels(pd.read_parquet(path), cfg, source=str(path))


def read_test_ids(cfg: DataConfig) -> pd.DataFrame:
    """Read ``test.parquet``: one string id column, no nulls, no duplicates."""
    path = Path(cfg.data_dir) / cfg.test_file
    if not path.is_file():
        raise FileNotFoundError(f"test file not found: {path}")
    frame = pd.read_parquet(path)
    if cfg.id_column not in frame.columns:
        raise SchemaError(f"{path}: missing column {cfg.id_column!r}; found {list(frame.columns)}")
    ids = frame[[cfg.id_column]]
    if ids[cfg.id_column].isna().any():
        raise SchemaError(f"{path}: column {cfg.id_column!r} has nulls; " + _show(ids, ids[cfg.id_column].isna(), [cfg.id_column]))
    if not _is_string_column(ids[cfg.id_column]):
        raise SchemaError(f"{path}: column {cfg.id_column!r} must be strings, got dtype {ids[cfg.id_column].dtype}")
    dup = ids[cfg.id_column].duplicated(keep=False)
    if dup.any():
        raise SchemaError(f"{path}: duplicate ids; " + _show(ids, dup, [cfg.id_column]))
    return ids.reset_index(drop=True)


# --------------------------------------------------------------------------- images


@dataclass
class ImageReport:
    """Where each uuid's image is, and which uuids are missing or undecodable."""

    paths: dict[str, str]
    hashes: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)  # uuid -> reason

    @property
    def bad(self) -> list[str]:
        return sorted(set(self.missing) | set(self.corrupt))

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing image(s): {self.missing[:_MAX_SHOWN]}")
        if self.corrupt:
            shown = dict(list(self.corrupt.items())[:_MAX_SHOWN])
            parts.append(f"{len(self.corrupt)} undecodable image(s): {shown}")
        return "; ".join(parts) or "all images present and decodable"


def _find_image(image_dir: Path, uuid: str, extensions: list[str]) -> Path | None:
    for ext in extensions:
        candidate = image_dir / f"{uuid}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _check_one(path: Path) -> tuple[str | None, str | None]:
    """Return (content hash, error) after a full decode with Pillow."""
    from PIL import Image

    try:
        raw = path.read_bytes()
        with Image.open(path) as image:
            image.load()
            if image.width < 2 or image.height < 2:
                return None, f"image too small ({image.width}x{image.height})"
    except Exception as error:  # noqa: BLE001 - any decoder failure is reported, not raised
        return None, f"{type(error).__name__}: {error}"
    return hashlib.blake2b(raw, digest_size=16).hexdigest(), None


def check_images(uuids: list[str], cfg: DataConfig, *, decode: bool = True) -> ImageReport:
    """Locate every uuid's image and (optionally) fully decode and hash it, in parallel.

    Done once up front so that training never meets a bad file mid-epoch.
    """
    image_dir = Path(cfg.images)
    report = ImageReport(paths={})
    for uuid in dict.fromkeys(uuids):
        found = _find_image(image_dir, uuid, cfg.image_extensions)
        if found is None:
            report.missing.append(uuid)
        else:
            report.paths[uuid] = str(found)
    if decode:
        items = list(report.paths.items())
        with ThreadPoolExecutor(max_workers=8) as pool:
            checks = pool.map(lambda item: _check_one(Path(item[1])), items)
            results = list(progress.bar(checks, total=len(items), desc="checking images"))
        for (uuid, _), (digest, error) in zip(items, results):
            if error is not None:
                report.corrupt[uuid] = error
            else:
                report.hashes[uuid] = digest
        for uuid in report.corrupt:
            report.paths.pop(uuid)
    return report


def enforce_image_policy(report: ImageReport, cfg: DataConfig, *, what: str) -> None:
    """Raise on bad images unless the config says skip-and-report."""
    if not report.bad:
        return
    message = f"{what}: {report.describe()} (looked in {cfg.images} for {cfg.image_extensions})"
    if cfg.bad_images == "fail":
        raise ImageError(message + "; set data.bad_images=skip to drop them and continue")
    log.warning("skipping bad images — %s", message)


# --------------------------------------------------------------------------- duplicates


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
    return {"rows": len(labels), "exact_duplicate_rows": exact_rows, "repeated_uuids": repeated_ids,
            "same_image_different_uuid": content_dups, "groups": int(groups.nunique())}


# --------------------------------------------------------------------------- splits


def make_splits(labels: pd.DataFrame, groups: pd.Series, cfg: DataConfig, seed: int) -> pd.Series:
    """Seeded, category-stratified, duplicate-aware train/val/holdout assignment per row.

    Splitting happens on duplicate groups (one representative label each), so no
    uuid or image content appears on two sides.
    """
    from sklearn.model_selection import train_test_split

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
    from .utils import atomic_path

    path = splits_path(cfg, seed)
    unique = labels.assign(group=groups.values).drop_duplicates(cfg.id_column)
    if path.is_file():
        saved = pd.read_csv(path, dtype={cfg.id_column: str, "split": str, "group": np.int64})
        if set(saved[cfg.id_column]) == set(unique[cfg.id_column]) and saved["split"].isin(SPLITS).all():
            log.info("reusing splits from %s", path)
            return saved
        raise ImageError(
            f"splits file {path} does not match the labels (different uuids); delete it to re-split"
        )
    split = make_splits(labels, groups, cfg, seed)
    table = pd.DataFrame({cfg.id_column: unique[cfg.id_column].values,
                          "split": split.loc[unique.index].values,
                          "group": unique["group"].values})
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    log.info("wrote splits to %s", path)
    return table


# --------------------------------------------------------------------------- balancing


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


# --------------------------------------------------------------------------- the whole preparation


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
    return PreparedData(vocab=vocab, frames=frames, duplicates=dup, image_report=report,
                        splits_file=splits_path(cfg, seed))


# --------------------------------------------------------------------------- tables for the notebook


def split_table(prepared: PreparedData, category_column: str = "cc3") -> pd.DataFrame:
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


def corrupted_copy_error(labels: pd.DataFrame, cfg: DataConfig) -> str:
    """Validate a copy with one bad tag value; return the error, which names the file, the column and the row."""
    broken = labels.copy()
    broken.loc[broken.index[0], cfg.tag_columns[0]] = 2
    try:
        validate_labels(broken, cfg, source="corrupted copy of data.parquet")
    except SchemaError as error:
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the corrupted copy passed validation")
