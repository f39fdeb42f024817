"""Reading and validating the label files: schema checks with readable errors, the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..contract import DEFAULT_CATEGORY_COLUMN

# Offending rows or ids shown in an error message.
MAX_SHOWN = 5


class SchemaError(ValueError):
    """A labels file does not match the expected schema; the message names file, column, rows."""


@dataclass(frozen=True)
class Vocabulary:
    """Category names (code = position in sorted order) and tag column names."""

    categories: tuple[str, ...]
    tags: tuple[str, ...]
    category_column: str = DEFAULT_CATEGORY_COLUMN

    @classmethod
    def from_labels(cls, labels: pd.DataFrame, cfg: DataConfig) -> Vocabulary:
        names = tuple(sorted(labels[cfg.category_column].unique().tolist()))
        return cls(categories=names, tags=tuple(cfg.tag_columns), category_column=cfg.category_column)

    def encode(self, names: pd.Series) -> np.ndarray:
        index = {name: code for code, name in enumerate(self.categories)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise SchemaError(
                f"unknown {self.category_column} values {unknown[:MAX_SHOWN]}; vocabulary is {list(self.categories)}"
            )
        return names.map(index).to_numpy(dtype=np.int64)


def _show(frame: pd.DataFrame, mask: pd.Series, columns: list[str]) -> str:
    bad = frame.loc[mask, columns]
    more = f" (and {len(bad) - MAX_SHOWN} more)" if len(bad) > MAX_SHOWN else ""
    return f"{len(bad)} offending row(s){more}:\n{bad.head(MAX_SHOWN).to_string()}"


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
            raise SchemaError(
                f"{source}: tag column {column!r} has values other than 0/1; " + _show(frame, bad, [id_col, column])
            )
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
        raise SchemaError(
            f"{path}: column {cfg.id_column!r} has nulls; " + _show(ids, ids[cfg.id_column].isna(), [cfg.id_column])
        )
    if not _is_string_column(ids[cfg.id_column]):
        raise SchemaError(f"{path}: column {cfg.id_column!r} must be strings, got dtype {ids[cfg.id_column].dtype}")
    dup = ids[cfg.id_column].duplicated(keep=False)
    if dup.any():
        raise SchemaError(f"{path}: duplicate ids; " + _show(ids, dup, [cfg.id_column]))
    return ids.reset_index(drop=True)


def corrupted_copy_error(labels: pd.DataFrame, cfg: DataConfig) -> str:
    """Validate a copy with one bad tag value; return the error, which names the file, the column and the row."""
    broken = labels.copy()
    broken.loc[broken.index[0], cfg.tag_columns[0]] = 2
    try:
        validate_labels(broken, cfg, source="corrupted copy of data.parquet")
    except SchemaError as error:
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the corrupted copy passed validation")
