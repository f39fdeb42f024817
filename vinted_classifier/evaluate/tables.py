"""The metrics dict as pandas tables (for the notebook), and scoring a predictions file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vinted_classifier.evaluate.metrics import score_hard_predictions


def summary_table(metrics: dict) -> pd.DataFrame:
    """Headline numbers per evaluated split (validation tunes the thresholds; holdout is untouched)."""
    return pd.DataFrame(
        {
            split: {
                "n": m["n"],
                "top1_accuracy": m["top1_accuracy"],
                "top2_accuracy": m["top2_accuracy"],
                "category_macro_f1": m["categories"]["macro_f1"],
                "tag_macro_f1": m["tags"]["macro_f1"],
            }
            for split, m in metrics.items()
        }
    ).T


def tag_table(split_metrics: dict) -> pd.DataFrame:
    """Per-tag threshold, precision, recall, F1, ROC AUC and support of one split."""
    per_tag = split_metrics["tags"]["per_tag"]
    return pd.DataFrame(per_tag).T[["threshold", "precision", "recall", "f1", "roc_auc", "support"]]


def slices_table(split_metrics: dict) -> pd.DataFrame:
    """Top-1/top-2/tag F1 per slice value (e.g. per ``color1``) of one split."""
    return pd.DataFrame(split_metrics.get("slices", {})).T


def score_predictions_file(
    predictions: pd.DataFrame,
    labels_path: str | Path,
    *,
    id_column: str,
    category_column: str,
    categories: Sequence[str],
    tag_names: Sequence[str],
) -> pd.DataFrame | str:
    """Score ``predictions.parquet`` rows against a labels file (the demo's ``test_labels.parquet``).

    Returns a one-column table (top-1, top-2, F1 per tag, tag macro F1), or a sentence saying why
    there is nothing to score when the file does not exist (the real test labels are hidden).
    """
    path = Path(labels_path)
    if not path.is_file():
        return f"no {path.name} in {path.parent}: the real test labels are hidden, nothing to score against"
    truth = pd.read_parquet(path)
    missing = [c for c in [id_column, category_column, *tag_names] if c not in truth.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    merged = predictions.merge(truth, on=id_column, suffixes=("", "_true"), validate="1:1")
    code_of = {name: code for code, name in enumerate(categories)}
    unknown = sorted(set(merged[category_column]) - set(code_of))
    if unknown:
        raise ValueError(f"{path}: column {category_column!r} has categories {unknown} the model does not know")
    scores = score_hard_predictions(
        merged[category_column].map(code_of).to_numpy(np.int64),
        merged[["category1", "category2"]].to_numpy(),
        merged[[f"{t}_true" for t in tag_names]].to_numpy(),
        merged[list(tag_names)].to_numpy(),
        tag_names=tag_names,
    )
    row = {
        "n": scores["n"],
        "top1_accuracy": scores["top1_accuracy"],
        "top2_accuracy": scores["top2_accuracy"],
        **{f"{tag} F1": scores["tags"][tag]["f1"] for tag in tag_names},
        "tag macro F1": scores["tag_macro_f1"],
    }
    return pd.Series(row, name="test").to_frame()
