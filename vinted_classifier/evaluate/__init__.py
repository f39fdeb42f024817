"""Evaluation in one place: metrics (``metrics``), figures (``figures``), notebook tables (``tables``)
and running a model over the splits (``run``, imports TensorFlow: import it explicitly).

``top2`` and ``binarize_tags`` are the project's only ranking and tag-threshold rules.
"""

from vinted_classifier.evaluate.figures import (
    FIGURE_NAMES,
    confusion_matrix_figure,
    learning_curves_figure,
    pr_figure,
    roc_figure,
    save_figures,
    tag_confusion_figure,
)
from vinted_classifier.evaluate.metrics import (
    binarize_tags,
    evaluate_predictions,
    format_report,
    score_hard_predictions,
    top2,
    tune_thresholds,
)

__all__ = [
    "FIGURE_NAMES",
    "binarize_tags",
    "confusion_matrix_figure",
    "evaluate_predictions",
    "format_report",
    "learning_curves_figure",
    "pr_figure",
    "roc_figure",
    "save_figures",
    "score_hard_predictions",
    "tag_confusion_figure",
    "top2",
    "tune_thresholds",
]
