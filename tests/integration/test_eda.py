"""EDA tables on the real label file (known numbers) and figures/image checks on a tiny demo folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from vinted_classifier import demo, eda

TAGS = ["polka dot", "floral", "checker"]


@pytest.fixture(scope="module")
def real(reference_dir) -> pd.DataFrame:
    return pd.read_parquet(reference_dir / "data.parquet")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eda") / "demo"
    demo.generate_demo_dataset(out, scale=0.01, seed=5, workers=1)  # 34 rows + 4 test items
    return out


def test_category_balance(real):
    table, fig = eda.category_balance(real)
    assert table["count"].to_dict() == {
        "BLOUSES": 1168,
        "TANK_TOPS": 624,
        "CASUAL_DRESSES": 607,
        "MINI_DRESSES": 577,
        "SHIRTS": 571,
    }
    assert table["fraction"].sum() == pytest.approx(1.0)
    assert isinstance(fig, Figure) and len(fig.axes) == 1


def test_tag_rates(real):
    rates, n_tags, fig = eda.tag_rates(real)
    assert rates["positives"].to_dict() == {"polka dot": 936, "floral": 850, "checker": 809}
    assert rates.loc["floral", "rate"] == pytest.approx(850 / 3547)
    assert n_tags["rows"].to_dict() == {0: 952, 1: 2595}
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_tag_cooccurrence(real):
    counts, corr, fig = eda.tag_cooccurrence(real)
    assert list(counts.index) == TAGS and list(counts.columns) == TAGS
    assert np.diag(counts).tolist() == [936, 850, 809]
    assert (counts.to_numpy()[~np.eye(3, dtype=bool)] == 0).all()
    assert corr.loc["floral", "polka dot"] == pytest.approx(-0.34, abs=0.01)
    assert corr.loc["checker", "polka dot"] == pytest.approx(-0.33, abs=0.01)
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # two heatmaps + two colour bars


def test_category_tag_correlation(real):
    corr, fig = eda.category_tag_correlation(real)
    assert corr.shape == (5, 3) and list(corr.columns) == TAGS
    assert corr.loc["SHIRTS", "checker"] == pytest.approx(0.40, abs=0.01)
    assert corr.stack().idxmax() == ("SHIRTS", "checker")
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_color_distribution(real):
    table, fig = eda.color_distribution(real, top=5)
    assert list(table.index) == ["BLACK", "VARIOUS", "BLUE", "WHITE", "PINK", "OTHER"]
    assert table.loc["BLACK", "count"] == 1094
    assert table["count"].sum() == 3547
    assert table.loc["OTHER", "count"] == 3547 - (1094 + 517 + 422 + 288 + 235)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    full, _ = eda.color_distribution(real)
    assert len(full) == 16  # top 15 + OTHER (27 colours)


def test_duplicate_summary(real):
    summary = eda.duplicate_summary(real)["count"]
    assert summary["rows"] == 3547 and summary["unique_ids"] == 3436
    assert summary["duplicate_rows"] == 111 and summary["duplicate_ids"] == 111
    assert summary["ids_with_conflicting_labels"] == 0


def test_duplicate_summary_conflicting_labels():
    df = pd.DataFrame({"uuid": ["a", "a", "b", "b"], "cc3": ["X", "X", "X", "Y"]})
    summary = eda.duplicate_summary(df)["count"]
    assert summary.to_dict() == {
        "rows": 4,
        "unique_ids": 2,
        "duplicate_rows": 1,
        "duplicate_ids": 2,
        "ids_with_conflicting_labels": 1,
    }


def test_custom_column_names():
    df = pd.DataFrame({"id": list("abcd"), "cat": ["A", "A", "B", "B"], "dots": [1, 0, 0, 0], "lines": [0, 1, 1, 0]})
    corr, _ = eda.category_tag_correlation(df, category_column="cat", tag_columns=("dots", "lines"))
    assert corr.loc["A", "dots"] == pytest.approx(np.corrcoef([1, 1, 0, 0], [1, 0, 0, 0])[0, 1])
    assert eda.duplicate_summary(df, id_column="id")["count"]["duplicate_rows"] == 0


def test_image_size_distribution(tiny_dir):
    data = pd.read_parquet(tiny_dir / "data.parquet")
    uuids = list(data.uuid) + ["00000_missingmissingmissing00"]
    table, missing, fig = eda.image_size_distribution(uuids, tiny_dir)
    assert missing == ["00000_missingmissingmissing00"]
    assert len(table) == data.uuid.nunique() == 34

    first = table.iloc[0]
    with Image.open(tiny_dir / f"{first.uuid}.jpeg") as im:
        assert (first.width, first.height) == im.size
    assert table.width.between(300, 350).all() and table.height.between(400, 450).all()
    assert set(table["format"]) == {"JPEG"} and set(table["mode"]) == {"RGB"}
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    sampled, _, _ = eda.image_size_distribution(uuids, tiny_dir, sample=10, seed=1)
    assert len(sampled) <= 10 and set(sampled.uuid) <= set(uuids)


def test_sample_grid(tiny_dir):
    data = pd.read_parquet(tiny_dir / "data.parquet")
    fig = eda.sample_grid(data, tiny_dir, per_group=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 5 * 3
    assert sum(len(ax.images) for ax in fig.axes) == sum(min(3, n) for n in data.cc3.value_counts())
    by_tag = eda.sample_grid(data, tiny_dir, by="tags", per_group=2)
    assert len(by_tag.axes) == 4 * 2
    assert by_tag.axes[0].get_title(loc="left") == "polka dot"
