"""Exploratory data analysis of a Vinted-layout labels table: tables plus figures for the notebook.

Every function returns DataFrames and/or ``matplotlib.figure.Figure`` objects built without pyplot, so
nothing is shown or saved here (the notebook displays them) and no GUI backend is needed. Column names
are keyword arguments with the Vinted defaults, so the same code runs on other label files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

from .contract import DEFAULT_TAG_COLUMNS


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 4)):
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def category_balance(df: pd.DataFrame, *, category_column: str = "cc3") -> tuple[pd.DataFrame, Any]:
    """Rows per category and their share: the class imbalance the loss/sampling must handle."""
    counts = df[category_column].value_counts()
    table = pd.DataFrame({"count": counts, "fraction": counts / counts.sum()})
    table.index.name = category_column
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.barh(table.index.astype(str)[::-1], table["count"][::-1])
    ax.set_xlabel("rows")
    ax.set_title("Category balance")
    return table, fig


def tag_rates(
    df: pd.DataFrame, *, tag_columns: Sequence[str] = DEFAULT_TAG_COLUMNS
) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Positive rate per tag, and how many tags each row carries (multi-label or effectively exclusive?)."""
    tags = df[list(tag_columns)].astype(int)
    rates = pd.DataFrame({"positives": tags.sum(), "rate": tags.mean()})
    rates.index.name = "tag"
    per_row = tags.sum(axis=1).value_counts().sort_index()
    n_tags = pd.DataFrame({"rows": per_row, "fraction": per_row / len(tags)})
    n_tags.index.name = "tags_per_row"
    fig, axes = _figure(1, 2, (9, 3.5))
    axes[0, 0].bar(rates.index, rates["rate"])
    axes[0, 0].set_title("Positive rate per tag")
    axes[0, 1].bar(n_tags.index.astype(str), n_tags["rows"])
    axes[0, 1].set_title("Tags per row")
    return rates, n_tags, fig


def _heatmap(ax, matrix: pd.DataFrame, title: str, fmt: str, cmap: str = "coolwarm", vmin=None, vmax=None) -> None:
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), [str(i) for i in matrix.index])
    for (r, c), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
        ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=8)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def tag_cooccurrence(
    df: pd.DataFrame, *, tag_columns: Sequence[str] = DEFAULT_TAG_COLUMNS
) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Rows carrying both tags (diagonal: each tag alone) and the tag–tag Pearson correlation."""
    tags = df[list(tag_columns)].astype(int)
    counts = tags.T @ tags
    corr = tags.corr()
    fig, axes = _figure(1, 2, (10, 4))
    _heatmap(axes[0, 0], counts, "Co-occurrence (rows)", ".0f", cmap="Blues")
    _heatmap(axes[0, 1], corr, "Correlation", ".2f", vmin=-1, vmax=1)
    return counts, corr, fig


def category_tag_correlation(
    df: pd.DataFrame, *, category_column: str = "cc3", tag_columns: Sequence[str] = DEFAULT_TAG_COLUMNS
) -> tuple[pd.DataFrame, Any]:
    """Pearson correlation of each category's one-hot column with each tag (e.g. checker–SHIRTS)."""
    onehot = pd.get_dummies(df[category_column]).astype(float)
    tags = df[list(tag_columns)].astype(float)
    corr = pd.DataFrame({t: onehot.corrwith(tags[t]) for t in tag_columns})
    corr.index.name = category_column
    fig, axes = _figure(size=(6, 4))
    _heatmap(axes[0, 0], corr, "Category × tag correlation", ".2f", vmin=-1, vmax=1)
    return corr, fig


def color_distribution(df: pd.DataFrame, top: int = 15, *, color_column: str = "color1") -> tuple[pd.DataFrame, Any]:
    """Most frequent colours (the rest summed as OTHER): a long tail the model never sees much of."""
    counts = df[color_column].value_counts()
    shown = counts.iloc[:top]
    if len(counts) > top:
        shown = pd.concat([shown, pd.Series({"OTHER": counts.iloc[top:].sum()})])
    table = pd.DataFrame({"count": shown, "fraction": shown / counts.sum()})
    table.index.name = color_column
    fig, axes = _figure(size=(7, 4))
    axes[0, 0].barh(table.index.astype(str)[::-1], table["count"][::-1])
    axes[0, 0].set_title(f"Colours (top {top} of {len(counts)})")
    return table, fig


def duplicate_summary(df: pd.DataFrame, *, id_column: str = "uuid") -> pd.DataFrame:
    """Exact duplicate rows and repeated ids: they leak between splits unless the split dedupes."""
    dup_rows = df.duplicated(keep="first")
    dup_ids = df[id_column].duplicated(keep="first")
    conflicting = df[dup_ids & ~dup_rows][id_column].nunique()
    return pd.DataFrame(
        {
            "count": {
                "rows": len(df),
                "unique_ids": df[id_column].nunique(),
                "duplicate_rows": int(dup_rows.sum()),
                "duplicate_ids": int(dup_ids.sum()),
                "ids_with_conflicting_labels": int(conflicting),
            }
        }
    )


def _find_image(image_dir: Path, uuid: str, extensions: Iterable[str]) -> Path | None:
    for ext in extensions:
        path = image_dir / f"{uuid}{ext}"
        if path.is_file():
            return path
    return None


def image_size_distribution(
    uuids: Iterable[str],
    image_dir: str | Path,
    extensions: Sequence[str] = (".jpeg", ".jpg", ".png"),
    sample: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str], Any]:
    """Width/height per image from file headers only (PIL opens lazily), to pick the model input size.

    Returns (table with uuid, width, height, mode, format; missing or unreadable uuids; histogram figure).
    """
    ids = list(dict.fromkeys(uuids))
    if sample is not None and sample < len(ids):
        ids = list(np.random.default_rng(seed).choice(np.array(ids, dtype=object), size=sample, replace=False))
    image_dir = Path(image_dir)
    rows, missing = [], []
    for uid in ids:
        path = _find_image(image_dir, uid, extensions)
        if path is None:
            missing.append(uid)
            continue
        try:
            with Image.open(path) as im:
                rows.append({"uuid": uid, "width": im.width, "height": im.height, "mode": im.mode, "format": im.format})
        except (UnidentifiedImageError, OSError):
            missing.append(uid)
    table = pd.DataFrame(rows, columns=["uuid", "width", "height", "mode", "format"])
    fig, axes = _figure(1, 2, (9, 3.5))
    for ax, col in zip(axes[0], ("width", "height"), strict=True):
        ax.hist(table[col], bins=20)
        ax.set_title(f"{col} (px)")
    return table, missing, fig


def sample_grid(
    df: pd.DataFrame,
    image_dir: str | Path,
    by: str = "cc3",
    per_group: int = 4,
    seed: int = 0,
    *,
    id_column: str = "uuid",
    tag_columns: Sequence[str] = DEFAULT_TAG_COLUMNS,
    extensions: Sequence[str] = (".jpeg", ".jpg", ".png"),
    thumb: int = 160,
):
    """Example images to eyeball labels: one row per value of ``by`` (e.g. each category), or with
    ``by="tags"`` one row per tag plus a "no tag" row."""
    image_dir = Path(image_dir)
    if by == "tags":
        tags = df[list(tag_columns)].astype(int)
        groups = [(t, df[tags[t] == 1]) for t in tag_columns] + [("no tag", df[tags.sum(axis=1) == 0])]
    else:
        groups = [(name, part) for name, part in df.groupby(by, sort=True)]
    fig, axes = _figure(len(groups), per_group, (per_group * 1.8, len(groups) * 2.3))
    for r, (name, part) in enumerate(groups):
        picked = part.sample(n=min(per_group, len(part)), random_state=seed) if len(part) else part
        for c in range(per_group):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(picked):
                continue
            uid = picked[id_column].iloc[c]
            path = _find_image(image_dir, uid, extensions)
            if path is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            else:
                with Image.open(path) as im:
                    im.draft("RGB", (thumb, thumb))
                    ax.imshow(np.asarray(im.convert("RGB")))
            if c == 0:
                ax.set_title(str(name), fontsize=9, loc="left")
    return fig
