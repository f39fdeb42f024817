"""The project's one ranking rule (top2), one tag rule (binarize_tags), hard-prediction scoring and tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vinted_classifier.evaluate import binarize_tags, evaluate_predictions, score_hard_predictions, top2
from vinted_classifier.evaluate.tables import score_predictions_file, slices_table, summary_table, tag_table


def test_binarize_tags_is_p_at_or_above_each_threshold():
    p = np.array([[0.5, 0.2, 0.9], [0.49, 0.3, 0.1]])
    assert binarize_tags(p, [0.5, 0.3, 0.9]).tolist() == [[1, 0, 1], [0, 1, 0]]
    assert binarize_tags(p, 0.4).tolist() == [[1, 0, 1], [1, 0, 0]]  # one scalar for every tag
    assert binarize_tags(p, [0.5, 0.3, 0.9]).dtype == np.int64


def test_binarize_tags_compares_float32_outputs_in_float32():
    """0.7 is not a float32; a float32 probability equal to float32(0.7) must count as reaching it."""
    p = np.array([[np.float32(0.7)]], np.float32)
    assert binarize_tags(p, [0.7]).tolist() == [[1]]
    assert binarize_tags(p.astype(np.float64), [0.7]).tolist() == [[0]]  # float64(float32(0.7)) < 0.7


def test_binarize_tags_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"thresholds must have shape \(3,\)"):
        binarize_tags(np.zeros((2, 3)), [0.5, 0.5])
    with pytest.raises(ValueError, match="2-D"):
        binarize_tags(np.zeros(3), [0.5, 0.5, 0.5])


def test_top2_breaks_ties_towards_the_lower_code():
    assert top2([[0.2, 0.4, 0.4], [0.7, 0.1, 0.2]]).tolist() == [[1, 2], [0, 2]]


def test_score_hard_predictions_matches_evaluate_predictions():
    rng = np.random.default_rng(3)
    p_cat = rng.dirichlet(np.ones(4), size=40)
    y_cat = rng.integers(0, 4, 40)
    y_tags = rng.integers(0, 2, (40, 2))
    p_tags = rng.random((40, 2))
    thresholds = [0.4, 0.6]
    full = evaluate_predictions(
        y_cat, p_cat, y_tags, p_tags, categories=list("abcd"), tag_names=["x", "y"], thresholds=thresholds
    )
    hard = score_hard_predictions(y_cat, top2(p_cat), y_tags, binarize_tags(p_tags, thresholds), tag_names=["x", "y"])
    assert hard["top1_accuracy"] == full["top1_accuracy"] and hard["top2_accuracy"] == full["top2_accuracy"]
    assert hard["tags"]["x"]["f1"] == full["tags"]["per_tag"]["x"]["f1"]
    assert hard["tag_macro_f1"] == full["tags"]["macro_f1"]


def test_score_hard_predictions_leaves_undefined_f1_out_of_the_mean():
    """A tag with no positives and none predicted has no F1 (None), not 0; the macro mean skips it."""
    hard = score_hard_predictions([0, 1], [[0, 1], [0, 1]], [[1, 0], [0, 0]], [[1, 0], [0, 0]], tag_names=["x", "y"])
    assert hard["tags"]["y"]["f1"] is None
    assert hard["tag_macro_f1"] == 1.0
    assert (hard["top1_accuracy"], hard["top2_accuracy"]) == (0.5, 1.0)


def test_score_predictions_file(tmp_path):
    predictions = pd.DataFrame(
        {"uuid": ["a", "b", "c"], "category1": [0, 1, 1], "category2": [1, 0, 2], "dots": [1, 0, 0]}
    )
    truth = pd.DataFrame({"uuid": ["c", "a", "b"], "cc3": ["Z", "X", "X"], "dots": [0, 1, 1]})
    path = tmp_path / "test_labels.parquet"
    truth.to_parquet(path)
    kwargs = dict(id_column="uuid", category_column="cc3", categories=["X", "Y", "Z"], tag_names=["dots"])
    table = score_predictions_file(predictions, path, **kwargs)
    column = table["test"]
    assert column["n"] == 3
    assert column["top1_accuracy"] == pytest.approx(1 / 3) and column["top2_accuracy"] == pytest.approx(1.0)
    assert column["dots F1"] == pytest.approx(2 / 3) and column["tag macro F1"] == pytest.approx(2 / 3)
    assert "nothing to score" in score_predictions_file(predictions, tmp_path / "none.parquet", **kwargs)
    truth.assign(cc3=["Z", "X", "W"]).to_parquet(path)
    with pytest.raises(ValueError, match=r"test_labels\.parquet: column 'cc3' has categories \['W'\]"):
        score_predictions_file(predictions, path, **kwargs)
    truth.drop(columns="dots").to_parquet(path)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['dots'\]"):
        score_predictions_file(predictions, path, **kwargs)


def test_tables_from_a_metrics_dict():
    metrics = evaluate_predictions(
        [0, 1, 1, 0],
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]],
        [[1], [0], [1], [0]],
        [[0.8], [0.3], [0.6], [0.1]],
        categories=["a", "b"],
        tag_names=["t"],
        thresholds=[0.5],
        slices=["red", "red", "blue", "blue"],
        min_slice_n=1,
    )
    summary = summary_table({"holdout": metrics})
    assert summary.loc["holdout", "top1_accuracy"] == 0.5 and summary.loc["holdout", "n"] == 4
    tags = tag_table(metrics)
    assert list(tags.columns) == ["threshold", "precision", "recall", "f1", "roc_auc", "support"]
    assert tags.loc["t", "f1"] == 1.0
    assert set(slices_table(metrics).index) == {"red", "blue"}


def test_the_rules_import_without_scikit_learn_or_matplotlib():
    """A server adapter can use top2/binarize_tags without loading the metrics stack."""
    code = (
        "import sys; from vinted_classifier.evaluate import binarize_tags, top2; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'tensorflow', 'pandas') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_the_package_names_resolve_lazily_and_unknown_ones_fail():
    import vinted_classifier.evaluate as evaluate

    assert evaluate.format_report.__module__ == "vinted_classifier.evaluate.metrics"
    assert evaluate.save_figures.__module__ == "vinted_classifier.evaluate.figures"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        evaluate.nope  # noqa: B018
