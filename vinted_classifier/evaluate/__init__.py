"""Evaluation in one place: the decision rules (``rules``: ``top2``, ``binarize_tags``, NumPy only),
metrics (``metrics``), figures (``figures``), notebook tables (``tables``) and running a model over
the splits (``run``, which imports TensorFlow).

Names are loaded on first use, so ``from vinted_classifier.evaluate import top2`` costs NumPy only.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "binarize_tags": "rules",
    "top2": "rules",
    "evaluate_predictions": "metrics",
    "format_report": "metrics",
    "score_hard_predictions": "metrics",
    "top1_top2_accuracy": "metrics",
    "tune_thresholds": "metrics",
    "FIGURE_NAMES": "figures",
    "confusion_matrix_figure": "figures",
    "learning_curves_figure": "figures",
    "pr_figure": "figures",
    "roc_figure": "figures",
    "save_figures": "figures",
    "tag_confusion_figure": "figures",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
