"""Evaluation figures, built on ``matplotlib.figure.Figure`` (no pyplot state).

They render headless and never leak between calls; :func:`save_figures` writes them
under stable names that the CLI, the notebook and the README link to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from vinted_classifier.evaluate.metrics import (
    _check_category_inputs,
    _check_tag_inputs,
    _check_thresholds,
    binarize_tags,
    top2,
)
from vinted_classifier.utils import atomic_path

__all__ = [
    "FIGURE_NAMES",
    "confusion_matrix_figure",
    "learning_curves_figure",
    "pr_figure",
    "roc_figure",
    "save_figures",
    "tag_confusion_figure",
]

FIGURE_NAMES = {
    "confusion_matrix": "confusion_matrix.png",
    "roc_tags": "roc_tags.png",
    "pr_tags": "pr_tags.png",
    "tag_confusion": "tag_confusion.png",
    "learning_curves": "learning_curves.png",
}


def confusion_matrix_figure(y_cat: Any, p_cat: Any, *, categories: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (recall per true class), annotated with counts."""
    y, p = _check_category_inputs(y_cat, p_cat, categories)
    labels = list(range(len(categories)))
    cm = confusion_matrix(y, top2(p)[:, 0], labels=labels)
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)

    size = 2.0 + 0.6 * len(categories)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(labels, labels=list(categories), rotation=45, ha="right")
    ax.set_yticks(labels, labels=list(categories))
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true")
    ax.set_title("Category confusion matrix (row-normalised)")
    for i in labels:
        for j in labels:
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n({cm[i, j]})",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    return fig


def roc_figure(y_tags: Any, p_tags: Any, *, tag_names: Sequence[str]) -> Figure:
    """One ROC curve per tag; tags with a single label value are listed as AUC n/a."""
    y, p = _check_tag_inputs(y_tags, p_tags, tag_names)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for j, name in enumerate(tag_names):
        if 0 < y[:, j].sum() < y.shape[0]:
            fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
            auc = roc_auc_score(y[:, j], p[:, j])
            ax.plot(fpr, tpr, label=f"{name} (AUC={auc:.3f})")
        else:
            ax.plot([], [], label=f"{name} (AUC n/a)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Tag ROC curves")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(y_tags: Any, p_tags: Any, *, tag_names: Sequence[str], thresholds: Any) -> Figure:
    """One precision-recall curve per tag with the chosen operating point marked."""
    y, p = _check_tag_inputs(y_tags, p_tags, tag_names)
    thr = _check_thresholds(thresholds, y.shape[1])
    pred = binarize_tags(p, thr)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    for j, name in enumerate(tag_names):
        n_pos = int(y[:, j].sum())
        if n_pos == 0:
            ax.plot([], [], label=f"{name} (no positives)")
            continue
        precision, recall, _ = precision_recall_curve(y[:, j], p[:, j])
        ap = average_precision_score(y[:, j], p[:, j])
        (line,) = ax.step(recall, precision, where="post", label=f"{name} (AP={ap:.3f})")
        tp = int((pred[:, j] & y[:, j]).sum())
        n_pred = int(pred[:, j].sum())
        if n_pred:  # precision undefined when nothing is predicted: nothing to mark
            ax.plot(
                tp / n_pos,
                tp / n_pred,
                marker="o",
                markersize=7,
                color=line.get_color(),
                markeredgecolor="black",
                linestyle="none",
            )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Tag precision-recall (dot = chosen threshold)")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def tag_confusion_figure(y_tags: Any, p_tags: Any, *, tag_names: Sequence[str], thresholds: Any) -> Figure:
    """One annotated 2x2 [[tn, fp], [fn, tp]] panel per tag at its threshold."""
    y, p = _check_tag_inputs(y_tags, p_tags, tag_names)
    thr = _check_thresholds(thresholds, y.shape[1])
    pred = binarize_tags(p, thr)
    n_tags = max(len(tag_names), 1)
    fig = Figure(figsize=(3.0 * n_tags, 3.2), layout="constrained")
    axes = fig.subplots(1, n_tags, squeeze=False)[0]
    for j, name in enumerate(tag_names):
        ax = axes[j]
        cm = confusion_matrix(y[:, j], pred[:, j], labels=[0, 1])
        ax.imshow(cm, cmap="Oranges")
        for (i, k), count in np.ndenumerate(cm):
            ax.text(k, i, str(count), ha="center", va="center")
        ax.set_xticks([0, 1], labels=["pred 0", "pred 1"])
        ax.set_yticks([0, 1], labels=["true 0", "true 1"])
        ax.set_title(f"{name} (thr={thr[j]:.2f})", fontsize=9)
    if not tag_names:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no tags", ha="center", va="center")
    return fig


def _history_groups(history: Mapping[str, Any]) -> dict[str, list[str]]:
    """Base metric names (val_ prefix stripped) grouped into loss / top-1 / top-2 / other."""
    groups: dict[str, list[str]] = {"loss": [], "top-1": [], "top-2": [], "other": []}
    bases: list[str] = []
    for key in history:
        base = key[4:] if key.startswith("val_") else key
        if base not in bases:
            bases.append(base)
    for base in bases:
        if base in ("lr", "learning_rate"):
            continue  # a schedule, not a metric; on a 0-1 axis it would flatten the rest
        if base.endswith("loss"):
            groups["loss"].append(base)
        elif "top1" in base or "top_1" in base:
            groups["top-1"].append(base)
        elif "top2" in base or "top_2" in base:
            groups["top-2"].append(base)
        else:
            groups["other"].append(base)
    return {title: names for title, names in groups.items() if names}


def _series(history: Mapping[str, Any], key: str) -> np.ndarray | None:
    values = history.get(key)
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return arr if arr.size else None


def learning_curves_figure(history: Mapping[str, Sequence[float]]) -> Figure:
    """Train (solid) vs validation (dashed) curves, one panel per metric family present.

    Works with any subset of Keras history keys; an empty history gives a single
    panel that says so, so callers never need to special-case it.
    """
    groups = _history_groups(history)
    groups = {
        title: [b for b in bases if _series(history, b) is not None or _series(history, "val_" + b) is not None]
        for title, bases in groups.items()
    }
    groups = {title: bases for title, bases in groups.items() if bases}
    n_panels = max(len(groups), 1)
    fig = Figure(figsize=(4.5 * n_panels, 3.8), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    if not groups:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no training history", ha="center", va="center")
        return fig
    for ax, (title, bases) in zip(axes, groups.items(), strict=True):
        for i, base in enumerate(bases):
            color = f"C{i % 10}"
            for key, style, suffix in ((base, "-", "train"), ("val_" + base, "--", "val")):
                arr = _series(history, key)
                if arr is not None:
                    ax.plot(np.arange(1, arr.size + 1), arr, style, color=color, label=f"{base} ({suffix})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


def _save_png(fig: Figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def save_figures(
    y_cat: Any,
    p_cat: Any,
    y_tags: Any,
    p_tags: Any,
    *,
    categories: Sequence[str],
    tag_names: Sequence[str],
    thresholds: Any,
    out_dir: str | Path,
    history: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Path]:
    """Write the evaluation PNGs (atomically, stable names) and return {name: path}.

    ``learning_curves.png`` is written only when ``history`` is given.
    """
    out_dir = Path(out_dir)
    figures = {
        "confusion_matrix": confusion_matrix_figure(y_cat, p_cat, categories=categories),
        "roc_tags": roc_figure(y_tags, p_tags, tag_names=tag_names),
        "pr_tags": pr_figure(y_tags, p_tags, tag_names=tag_names, thresholds=thresholds),
        "tag_confusion": tag_confusion_figure(y_tags, p_tags, tag_names=tag_names, thresholds=thresholds),
    }
    if history is not None:
        figures["learning_curves"] = learning_curves_figure(history)
    paths: dict[str, Path] = {}
    for name, fig in figures.items():
        path = out_dir / FIGURE_NAMES[name]
        _save_png(fig, path)
        paths[name] = path
    return paths
