"""Metrics for the two heads: category (top-1/top-2 softmax) and pattern tags (sigmoids).

Pure NumPy / scikit-learn: the model's probability arrays come in, a JSON-ready dict
comes out, so this can be tested (and rerun on saved predictions) without TensorFlow.
Conventions used everywhere (training, prediction, the notebook, the server adapter):

* :func:`top2` ranks categories, ties to the lower code (like ``tf.math.top_k``), and
  :func:`binarize_tags` is the one ``p >= threshold`` rule (both live in ``rules.py``;
  thresholds come from :func:`tune_thresholds` on the validation split, not a fixed 0.4);
* metrics that are undefined (precision with nothing predicted, recall or AUC with
  no positives) are ``None`` in the result rather than a misleading 0, and macro
  averages skip them (scikit-learn's ``zero_division=np.nan`` semantics);
* the result dict holds only builtin types, so ``json.dumps`` works on it directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from vinted_classifier.evaluate.rules import _as_prob_matrix, _check_thresholds, binarize_tags, top2

__all__ = [
    "binarize_tags",
    "evaluate_predictions",
    "format_report",
    "score_hard_predictions",
    "top1_top2_accuracy",
    "top2",
    "tune_thresholds",
]

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
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=np.nan)
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
    pred = binarize_tags(p, thresholds)
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
    hit1, hit2 = _hits(ranked, y_cat)
    out: dict[str, dict] = {}
    keys, key_counts = np.unique(grouped, return_counts=True)
    # Largest slices first; OTHER last since it is a mixture, not a slice.
    order = sorted(
        zip(keys.tolist(), key_counts.tolist(), strict=True), key=lambda kv: (kv[0] == OTHER_SLICE, -kv[1], kv[0])
    )
    for key, count in order:
        mask = grouped == key
        entry: dict[str, Any] = {
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
    hit1, hit2 = _hits(ranked, y)
    result: dict[str, Any] = {
        "n": int(y.shape[0]),
        "top1_accuracy": float(hit1.mean()),
        "top2_accuracy": float(hit2.mean()),
        "categories": _category_metrics(y, ranked[:, 0], categories),
        "tags": _tag_metrics(yt, pt, thr, tag_names, low_fpr),
    }
    if slices is not None:
        result["slices"] = _slice_metrics(
            _slice_labels(slices, y.shape[0]), y, ranked, yt, binarize_tags(pt, thr), min_slice_n
        )
    return result


def score_hard_predictions(y_cat: Any, ranked: Any, y_tags: Any, pred_tags: Any, *, tag_names: Sequence[str]) -> dict:
    """Top-1/top-2 accuracy and per-tag F1 of predictions already made (codes and 0/1 flags).

    For files such as ``predictions.parquet`` scored against known labels, where no
    probabilities exist; same definitions as :func:`evaluate_predictions`.
    """
    y = np.asarray(y_cat)
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[1] != 2 or y.shape != (ranked.shape[0],):
        raise ValueError(
            f"ranked must be [N, 2] codes for N={y.shape[0] if y.ndim else '?'} labels, "
            f"got shapes {ranked.shape} and {y.shape}"
        )
    yt, pt = _as_binary_matrix(y_tags, "y_tags"), _as_binary_matrix(pred_tags, "pred_tags")
    if yt.shape != pt.shape or yt.shape[0] != y.shape[0] or yt.shape[1] != len(tag_names):
        raise ValueError(f"y_tags {yt.shape} and pred_tags {pt.shape} must both be [{y.shape[0]}, {len(tag_names)}]")
    if y.shape[0] == 0:
        raise ValueError("cannot score an empty set of predictions")
    hit1, hit2 = _hits(ranked, y)
    _, _, f1, support = _tag_prf(yt, pt)
    return {
        "n": int(y.shape[0]),
        "top1_accuracy": float(hit1.mean()),
        "top2_accuracy": float(hit2.mean()),
        "tags": {name: {"f1": _opt_float(f1[j]), "support": int(support[j])} for j, name in enumerate(tag_names)},
        "tag_macro_f1": _nanmean_or_none(f1),
    }


def top1_top2_accuracy(y_cat: Any, p_cat: Any) -> tuple[float, float]:
    """Top-1 and top-2 accuracy of category probabilities, ranked by :func:`top2` (the search's trial scores)."""
    y = np.asarray(y_cat)
    hit1, hit2 = _hits(top2(p_cat), y)
    return float(hit1.mean()), float(hit2.mean())


def _hits(ranked: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether the true code is the first choice, and whether it is among the two."""
    hit1 = ranked[:, 0] == y
    return hit1, hit1 | (ranked[:, 1] == y)


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
