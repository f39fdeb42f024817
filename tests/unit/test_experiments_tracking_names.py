"""Pure helpers of the MLflow tracking: flattening, metric names, per-epoch rows, the default URI."""

from __future__ import annotations

import math
from pathlib import Path

from vinted_classifier.config import load_config
from vinted_classifier.experiments.tracking import epoch_rows, flatten, metric_name, numeric_leaves, tracking_uri


def test_flatten_joins_keys_and_keeps_lists():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    assert flatten({"a": {"slices": {"x": 1}, "y": 2}}, skip=("slices",)) == {"a.y": 2}


def test_numeric_leaves_keep_finite_numbers_with_safe_names():
    tree = {"top1": 0.5, "n": 10, "ok": True, "name": "x", "nan": math.nan, "tags": {"polka dot": {"f1": 0.25}}}
    assert numeric_leaves(tree, "holdout.") == {
        "holdout.top1": 0.5,
        "holdout.n": 10.0,
        "holdout.tags.polka dot.f1": 0.25,
    }
    assert metric_name("val_tags_auc_polka(dot)") == "val_tags_auc_polka_dot_"


def test_epoch_rows_span_both_phases_and_drop_non_finite_values():
    rows = epoch_rows({"loss": [1.0, 0.5, 0.25], "val_loss": [2.0, math.inf, 1.0]})
    assert rows == [{"loss": 1.0, "val_loss": 2.0}, {"loss": 0.5}, {"loss": 0.25, "val_loss": 1.0}]
    assert epoch_rows({}) == []


def test_default_store_is_under_the_output_folder_and_a_given_uri_wins(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert tracking_uri(cfg) == f"sqlite:///{Path(tmp_path) / 'mlruns' / 'mlflow.db'}"
    other = load_config(None, [f"output_dir={tmp_path}", "tracking.tracking_uri=http://mlflow.internal:5000"])
    assert tracking_uri(other) == "http://mlflow.internal:5000"
