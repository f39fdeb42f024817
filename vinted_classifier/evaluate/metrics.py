"""Evaluation of the two heads: category (top-1/top-2 softmax) and pattern tags (sigmoids).

Pure NumPy / scikit-learn / Matplotlib: ``train`` produces the probability arrays and
calls this module, so it can be tested (and rerun on saved predictions) without
TensorFlow. Conventions used everywhere here:

* a tag is predicted positive when ``p >= threshold`` (thresholds come from
  :func:`tune_thresholds` on the validation split, not a fixed 0.4);
* metrics that are undefined (precision with nothing predicted, recall or AUC with
  no positives) are ``None`` in the result rather than a misleading 0, and macro
  averages skip them (scikit-learn's ``zero_division=np.nan`` semantics);
* the result dict holds only builtin types, so ``json.dumps`` works on it directly.

Figures are built on ``matplotlib.figure.Figure`` (no pyplot state), so they render
headless and never leak between calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from vinted_classifier.utils import atomic_path

__all__ = [
    "FIGURE_NAMES",
    "confusion_matrix_figure",
    "evaluate_predictions",
    "format_report",
    "learning_curves_figure",
    "pr_figure",
    "roc_figure",
    "save_figures",
    "tag_confusion_figure",
    "top2",
    "tune_thresholds",
]

# Stable file names: the CLI, the notebook and the README link to these.
FIGURE_NAMES = {
    "confusion_matrix": "confusion_matrix.png",
    "roc_tags": "roc_tags.png",
    "pr_tags": "pr_tags.png",
    "tag_confusion": "tag_confusion.png",
    "learning_curves": "learning_curves.png",
}

DEFAULT_THRESHOLD = 0.5
OTHER_SLICE = "OTHER"
MISSING_SLICE = "MISSING"


# --------------------------------------------------------------------------- helpers


def _opt_float(value: Any) -> float | None:
    """NaN/inf -> None so the metrics dict is strict JSON (no bare NaN tokens)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _nanmean_or_none(values: np.ndarray) -> float | None:
    """Mean of the defined entries; None when none is defined (avoids a RuntimeWarning)."""
    values = np.asarray(values, dtype=float)
    defined = values[np.isfinite(values)]
    return float(defined.mean()) if defined.size else None


def _as_binary_matrix(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, T], got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1")
    return arr.astype(np.int64)


def _as_prob_matrix(p: Any, name: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_category_inputs(y_cat: Any, p_cat: Any, categories: Sequence[str] | None = None):
    y = np.asarray(y_cat)
    p = _as_prob_matrix(p_cat, "p_cat")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_cat shape {y.shape} does not match p_cat shape {p.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_cat must hold integer category codes")
    y = y.astype(np.int64)
    n_classes = p.shape[1]
    if categories is not None and len(categories) != n_classes:
        raise ValueError(f"{len(categories)} category names for {n_classes} probability columns")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_cat codes must lie in [0, {n_classes})")
    return y, p


def _check_tag_inputs(y_tags: Any, p_tags: Any, tag_names: Sequence[str] | None = None):
    y = _as_binary_matrix(y_tags, "y_tags")
    p = _as_prob_matrix(p_tags, "p_tags")
    if y.shape != p.shape:
        raise ValueError(f"y_tags shape {y.shape} does not match p_tags shape {p.shape}")
    if tag_names is not None and len(tag_names) != y.shape[1]:
        raise ValueError(f"{len(tag_names)} tag names for {y.shape[1]} tag columns")
    return y, p


def _check_thresholds(thresholds: Any, n_tags: int) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_tags, float(thr))
    if thr.shape != (n_tags,):
        raise ValueError(f"thresholds must have shape ({n_tags},), got {thr.shape}")
    if not np.isfinite(thr).all():
        raise ValueError("thresholds contain NaN or inf")
    return thr


def _binarize(p_tags: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The one place the ``p >= threshold`` rule lives."""
    return (p_tags >= thresholds[None, :]).astype(np.int64)


# --------------------------------------------------------------------------- top-2


def top2(p_cat: Any) -> np.ndarray:
    """Codes of the most and second most likely category per row, shape [N, 2].

    Ties go to the lower code (stable sort on ``-p``), so the answer does not depend on
    the sort implementation; prediction code uses the same helper.
    """
    p = _as_prob_matrix(p_cat, "p_cat")
    if p.shape[1] < 2:
        raise ValueError("top2 needs at least two categories")
    return np.argsort(-p, axis=1, kind="stable")[:, :2].astype(np.int64)


# --------------------------------------------------------------------------- thresholds


def _best_threshold(y: np.ndarray, p: np.ndarray, candidates: np.ndarray) -> float:
    """F1-optimal candidate for one tag; ties broken towards 0.5, then the higher value."""
    n_pos = int(y.sum())
    if n_pos == 0:
        # F1 is 0 (or undefined) at every threshold: nothing to tune, keep the neutral value.
        return DEFAULT_THRESHOLD
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    pos_before = np.concatenate(([0], np.cumsum(y[order])))  # positives among the i lowest
    first_kept = np.searchsorted(p_sorted, candidates, side="left")  # p >= t from here on
    n_pred = p.shape[0] - first_kept
    tp = n_pos - pos_before[first_kept]
    # Integer numerator/denominator: equal F1 values give bit-identical floats, so the
    # exact comparison below finds every tie.
    f1 = 2.0 * tp / (n_pred + n_pos)
    best = candidates[f1 == f1.max()]
    dist = np.abs(best - DEFAULT_THRESHOLD)
    closest = best[dist == dist.min()]
    return float(closest.max())


def _default_candidates(p: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, both ends, and 0.5.

    Every distinct labelling is reachable, and a midpoint leaves a margin on both sides
    (more robust on unseen data than thresholding exactly at a validation score).
    """
    u = np.unique(p)
    mids = (u[:-1] + u[1:]) / 2.0
    ends = [u[0] / 2.0, (u[-1] + 1.0) / 2.0] if u.size else []
    return np.unique(np.concatenate((mids, ends, [DEFAULT_THRESHOLD])))


def tune_thresholds(y_true_tags: Any, p_tags: Any, *, grid: Any = None) -> np.ndarray:
    """Per-tag threshold that maximises F1 on the given (validation) split.

    Candidates are ``grid`` when given, else midpoints between distinct predicted
    probabilities (plus 0.5). Among equally good candidates the one closest to 0.5 wins.
    A tag without positives gets 0.5 silently: no threshold can produce a true positive,
    so tuning would only fit noise.
    """
    y, p = _check_tag_inputs(y_true_tags, p_tags)
    if grid is not None:
        grid_arr = np.unique(np.asarray(grid, dtype=np.float64).ravel())
        if grid_arr.size == 0 or not np.isfinite(grid_arr).all():
            raise ValueError("grid must be a non-empty array of finite thresholds")
    out = np.empty(y.shape[1], dtype=np.float64)
    for j in range(y.shape[1]):
        candidates = grid_arr if grid is not None else _default_candidates(p[:, j])
        out[j] = _best_threshold(y[:, j], p[:, j], candidates)
    return out


# --------------------------------------------------------------------------- metrics


def _category_metrics(y: np.ndarray, pred: np.ndarray, categories: Sequence[str]) -> dict:
    labels = list(range(len(categories)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=np.nan
    )
    per_class = {
        name: {
            "precision": _opt_float(prec[i]),
            "recall": _opt_float(rec[i]),
            "f1": _opt_float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(categories)
    }
    cm = confusion_matrix(y, pred, labels=labels)
    return {
        "labels": list(categories),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        # F1 is undefined only for a class neither present nor predicted: skipped.
        "macro_f1": _nanmean_or_none(f1),
    }


def _tpr_at_fpr(y: np.ndarray, p: np.ndarray, max_fpr: float) -> float:
    """Best TPR over achievable thresholds with FPR <= max_fpr (no interpolation).

    ``drop_intermediate=False`` matters: dropped collinear points can be exactly the
    operating point just under ``max_fpr``.
    """
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max())


def _tag_prf(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column precision, recall, F1, support; NaN where a ratio is undefined.

    Counted directly rather than via scikit-learn, which reads a one-column indicator
    matrix as a *binary* target and would return per-class (0 and 1) scores instead.
    Same definitions as ``precision_recall_fscore_support(zero_division=np.nan)``.
    """
    tp = (pred & y).sum(axis=0).astype(float)
    n_pred = pred.sum(axis=0).astype(float)
    support = y.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = n_pred + support
        f1 = np.where(denom > 0, 2.0 * tp / denom, np.nan)
    return precision, recall, f1, support


def _tag_metrics(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, tag_names: Sequence[str], low_fpr: float
) -> dict:
    pred = _binarize(p, thresholds)
    prec, rec, f1, support = _tag_prf(y, pred)
    per_tag = {}
    for j, name in enumerate(tag_names):
        yj, pj = y[:, j], p[:, j]
        both_classes = 0 < int(yj.sum()) < yj.shape[0]
        has_pos = int(yj.sum()) > 0
        cm = confusion_matrix(yj, pred[:, j], labels=[0, 1])
        per_tag[name] = {
            "threshold": float(thresholds[j]),
            "precision": _opt_float(prec[j]),
            "recall": _opt_float(rec[j]),
            "f1": _opt_float(f1[j]),
            "support": int(support[j]),
            "n_predicted": int(pred[:, j].sum()),
            "roc_auc": float(roc_auc_score(yj, pj)) if both_classes else None,
            "average_precision": float(average_precision_score(yj, pj)) if has_pos else None,
            "confusion_matrix": cm.astype(int).tolist(),  # [[tn, fp], [fn, tp]]
            "tpr_at_low_fpr": _tpr_at_fpr(yj, pj, low_fpr) if both_classes else None,
        }
    return {
        "names": list(tag_names),
        "low_fpr": float(low_fpr),
        "per_tag": per_tag,
        "macro_f1": _nanmean_or_none(f1),
    }


def _slice_labels(slices: Any, n: int) -> np.ndarray:
    series = slices if isinstance(slices, pd.Series) else pd.Series(list(slices))
    if len(series) != n:
        raise ValueError(f"slices has {len(series)} rows for {n} predictions")
    # Positional, not index-aligned: the arrays carry no index to align to.
    values = series.to_numpy(dtype=object)
    return np.array([MISSING_SLICE if pd.isna(v) else str(v) for v in values], dtype=object)


def _slice_metrics(
    labels: np.ndarray,
    y_cat: np.ndarray,
    ranked: np.ndarray,
    y_tags: np.ndarray,
    pred_tags: np.ndarray,
    min_n: int,
) -> dict:
    names, counts = np.unique(labels, return_counts=True)
    small = set(names[counts < min_n].tolist())
    grouped = np.array([OTHER_SLICE if v in small else v for v in labels], dtype=object)
    hit1 = ranked[:, 0] == y_cat
    hit2 = hit1 | (ranked[:, 1] == y_cat)
    out: dict[str, dict] = {}
    keys, key_counts = np.unique(grouped, return_counts=True)
    # Largest slices first; OTHER last since it is a mixture, not a slice.
    order = sorted(zip(keys.tolist(), key_counts.tolist()), key=lambda kv: (kv[0] == OTHER_SLICE, -kv[1], kv[0]))
    for key, count in order:
        mask = grouped == key
        entry = {
            "n": int(count),
            "top1_accuracy": float(hit1[mask].mean()),
            "top2_accuracy": float(hit2[mask].mean()),
            "tag_macro_f1": _nanmean_or_none(_tag_prf(y_tags[mask], pred_tags[mask])[2]),
        }
        if key == OTHER_SLICE:
            entry["members"] = sorted(small)
        out[key] = entry
    return out


def evaluate_predictions(
    y_cat: Any,
    p_cat: Any,
    y_tags: Any,
    p_tags: Any,
    *,
    categories: Sequence[str],
    tag_names: Sequence[str],
    thresholds: Any,
    slices: pd.Series | Sequence[Any] | None = None,
    low_fpr: float = 0.05,
    min_slice_n: int = 10,
) -> dict:
    """All metrics for one split as a JSON-serialisable dict.

    ``slices`` (e.g. ``color1`` per row, positional) adds per-value top-1/top-2/tag
    macro F1; values with fewer than ``min_slice_n`` rows are pooled into ``"OTHER"``
    so tiny groups do not produce noisy headline numbers.
    """
    y, p = _check_category_inputs(y_cat, p_cat, categories)
    yt, pt = _check_tag_inputs(y_tags, p_tags, tag_names)
    if yt.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} category rows but {yt.shape[0]} tag rows")
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate an empty split")
    if not 0.0 <= low_fpr <= 1.0:
        raise ValueError("low_fpr must lie in [0, 1]")
    thr = _check_thresholds(thresholds, yt.shape[1])

    ranked = top2(p)
    hit1 = ranked[:, 0] == y
    hit2 = hit1 | (ranked[:, 1] == y)
    result: dict[str, Any] = {
        "n": int(y.shape[0]),
        "top1_accuracy": float(hit1.mean()),
        "top2_accuracy": float(hit2.mean()),
        "categories": _category_metrics(y, ranked[:, 0], categories),
        "tags": _tag_metrics(yt, pt, thr, tag_names, low_fpr),
    }
    if slices is not None:
        result["slices"] = _slice_metrics(
            _slice_labels(slices, y.shape[0]), y, ranked, yt, _binarize(pt, thr), min_slice_n
        )
    return result


def format_report(metrics: Mapping[str, Any]) -> str:
    """Short plain-text summary for the CLI; undefined values print as ``n/a``."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"n={metrics['n']}  top-1={fmt(metrics['top1_accuracy'])}  top-2={fmt(metrics['top2_accuracy'])}"
        f"  category macro-F1={fmt(metrics['categories']['macro_f1'])}",
    ]
    tags = metrics["tags"]
    if tags["per_tag"]:
        width = max(len(name) for name in tags["per_tag"])
        lines.append(f"{'tag':<{width}}  thr    P      R      F1     AUC    support")
        for name, m in tags["per_tag"].items():
            lines.append(
                f"{name:<{width}}  {m['threshold']:.3f}  {fmt(m['precision'])}  {fmt(m['recall'])}"
                f"  {fmt(m['f1'])}  {fmt(m['roc_auc'])}  {m['support']}"
            )
    lines.append(f"tag macro-F1={fmt(tags['macro_f1'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


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
                j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
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
    pred = _binarize(p, thr)
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
            ax.plot(tp / n_pos, tp / n_pred, marker="o", markersize=7, color=line.get_color(),
                    markeredgecolor="black", linestyle="none")
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
    pred = _binarize(p, thr)
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
    for ax, (title, bases) in zip(axes, groups.items()):
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
