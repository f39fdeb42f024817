"""The data tables the notebook shows: rows per category and split, and the schema error on a corrupted copy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vinted_classifier import data
from vinted_classifier.config import DataConfig


def _labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uuid": ["a", "b", "c"],
            "cc3": ["X", "Y", "X"],
            "color1": ["RED", "BLUE", "RED"],
            "polka dot": [1, 0, 0],
            "floral": [0, 1, 0],
            "checker": [0, 0, 1],
        }
    )


def test_split_table_counts_rows_per_category_and_split_in_split_order():
    frames = {
        "train": pd.DataFrame({"cc3": ["X", "X", "Y"]}),
        "val": pd.DataFrame({"cc3": ["Y"]}),
        "holdout": pd.DataFrame({"cc3": ["X"]}),
    }
    prepared = data.PreparedData(
        vocab=data.Vocabulary(("X", "Y"), ()),
        frames=frames,
        duplicates={},
        image_report=data.ImageReport(paths={}),
        splits_file=Path("x"),
    )
    table = data.split_table(prepared)
    assert list(table.columns) == ["train", "val", "holdout", "All"]
    assert table.loc["X"].tolist() == [2, 0, 1, 3] and table.loc["All"].tolist() == [3, 1, 1, 5]


def test_corrupted_copy_error_names_the_column_and_leaves_the_original():
    labels = _labels()
    message = data.corrupted_copy_error(labels, DataConfig())
    assert message.startswith("SchemaError: ") and "corrupted copy of data.parquet" in message
    assert "polka dot" in message
    assert labels.loc[0, "polka dot"] == 1


def test_corrupted_copy_error_refuses_a_validator_that_accepts_it(monkeypatch):
    monkeypatch.setattr(data.schema, "validate_labels", lambda frame, cfg, source: frame)
    with pytest.raises(AssertionError, match="passed validation"):
        data.corrupted_copy_error(_labels(), DataConfig())
