"""The project's two decision rules, NumPy only (cheap to import, e.g. from a server adapter).

* :func:`top2`: categories ranked by probability, ties to the lower code (like ``tf.math.top_k``
  in the exported graph);
* :func:`binarize_tags`: a tag is present when ``p >= threshold`` (per-tag thresholds tuned on
  the validation split).

Training's evaluation, ``predict.py`` and the notebook use these; nothing else re-implements them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["binarize_tags", "top2"]


def _as_prob_matrix(p: Any, name: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_thresholds(thresholds: Any, n_tags: int) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_tags, float(thr))
    if thr.shape != (n_tags,):
        raise ValueError(f"thresholds must have shape ({n_tags},), got {thr.shape}")
    if not np.isfinite(thr).all():
        raise ValueError("thresholds contain NaN or inf")
    return thr


def binarize_tags(probabilities: Any, thresholds: Any) -> np.ndarray:
    """Tag flags [N, T] as int64 0/1: ``p >= threshold``, per tag. The one place this rule lives.

    The comparison runs in the probabilities' float dtype (float32 model outputs compare
    against float32 thresholds, as the SavedModel graph does); anything else in float64.
    """
    p = np.asarray(probabilities)
    dtype = p.dtype if p.dtype in (np.float32, np.float64) else np.float64
    p = p.astype(dtype, copy=False)
    if p.ndim != 2:
        raise ValueError(f"tag probabilities must be 2-D [N, T], got shape {p.shape}")
    thr = _check_thresholds(thresholds, p.shape[1]).astype(dtype)
    return (p >= thr[None, :]).astype(np.int64)


def top2(p_cat: Any) -> np.ndarray:
    """Codes of the most and second most likely category per row, shape [N, 2].

    Ties go to the lower code (stable sort on ``-p``), so the answer does not depend on
    the sort implementation; prediction code uses the same helper.
    """
    p = _as_prob_matrix(p_cat, "p_cat")
    if p.shape[1] < 2:
        raise ValueError("top2 needs at least two categories")
    return np.argsort(-p, axis=1, kind="stable")[:, :2].astype(np.int64)
