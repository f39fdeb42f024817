"""Data layer: schema validation on the real files, vocabularies, images, duplicates, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vinted_classifier import data
from vinted_classifier.config import DataConfig


@pytest.fixture()
def real_cfg(reference_dir) -> DataConfig:
    return DataConfig(data_dir=reference_dir)


@pytest.fixture()
def real_labels(real_cfg) -> pd.DataFrame:
    return data.read_labels(real_cfg)


def test_real_labels_pass_validation(real_labels):
    assert len(real_labels) == 3547
    assert real_labels["uuid"].nunique() == 3436
    assert real_labels[["polka dot", "floral", "checker"]].sum().tolist() == [936, 850, 809]


def test_vocabulary_codes_are_sorted_names(real_labels, real_cfg):
    vocab = data.Vocabulary.from_labels(real_labels, real_cfg)
    assert vocab.categories == ("BLOUSES", "CASUAL_DRESSES", "MINI_DRESSES", "SHIRTS", "TANK_TOPS")
    assert vocab.encode(pd.Series(["SHIRTS", "BLOUSES", "TANK_TOPS"])).tolist() == [3, 0, 4]
    with pytest.raises(data.SchemaError, match=r"unknown cc3 values \['JEANS'\]"):
        vocab.encode(pd.Series(["JEANS"]))


def test_real_test_ids(real_cfg):
    ids = data.read_test_ids(real_cfg)
    assert len(ids) == 429 and ids.columns.tolist() == ["uuid"]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns=["floral"]), r"missing column\(s\) \['floral'\]"),
        (lambda f: f.assign(checker=f["checker"].astype(float)), r"tag column 'checker' must be integer"),
        (
            lambda f: f.assign(**{"polka dot": f["polka dot"].where(f.index != 7, 2)}),
            r"'polka dot' has values other than 0/1",
        ),
        (lambda f: f.assign(color1=f["color1"].where(f.index != 3, None)), r"column 'color1' has nulls"),
        (lambda f: f.assign(cc3=f.index.astype(np.int64)), r"column 'cc3' must be strings"),
        (lambda f: f.assign(cc3=f["cc3"].where(f.index != 3546, "TANK_TOPS")), r"conflicting labels"),
    ],
    ids=["missing-column", "float-tags", "tag-value-2", "null", "int-category", "conflict"],
)
def test_each_corruption_gives_its_named_error(real_labels, real_cfg, corrupt, message):
    with pytest.raises(data.SchemaError, match=message) as info:
        data.validate_labels(corrupt(real_labels), real_cfg, source="data.parquet")
    assert "data.parquet" in str(info.value)


def test_error_shows_offending_rows(real_labels, real_cfg):
    broken = real_labels.copy()
    broken.loc[[10, 20], "floral"] = 5
    with pytest.raises(data.SchemaError) as info:
        data.validate_labels(broken, real_cfg)
    text = str(info.value)
    assert "2 offending row(s)" in text
    assert real_labels.loc[10, "uuid"] in text and real_labels.loc[20, "uuid"] in text


def test_other_dataset_works_with_config_only(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "kind": ["SHOE", "BAG", "SHOE"], "striped": [1, 0, 0]})
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    cfg = DataConfig(
        data_dir=tmp_path, id_column="id", category_column="kind", tag_columns=["striped"], extra_columns=[]
    )
    labels = data.read_labels(cfg)
    vocab = data.Vocabulary.from_labels(labels, cfg)
    assert vocab.categories == ("BAG", "SHOE") and vocab.tags == ("striped",)


def test_duplicate_aware_split_on_real_labels(real_labels, real_cfg):
    groups = data.duplicate_groups(real_labels, real_cfg)
    report = data.duplicate_report(real_labels, real_cfg, groups)
    assert report["exact_duplicate_rows"] == 111 and report["groups"] == 3436
    split = data.make_splits(real_labels, groups, real_cfg, seed=7)
    sides = pd.DataFrame({"uuid": real_labels["uuid"], "split": split}).groupby("uuid")["split"].nunique()
    assert sides.max() == 1, "a uuid landed on two sides of the split"
    unique = real_labels.assign(split=split.values).drop_duplicates("uuid")
    shares = unique["split"].value_counts(normalize=True)
    assert shares["holdout"] == pytest.approx(0.15, abs=0.01) and shares["val"] == pytest.approx(0.15, abs=0.01)
    overall = unique["cc3"].value_counts(normalize=True)
    for name in ("train", "val", "holdout"):
        part = unique.loc[unique["split"] == name, "cc3"].value_counts(normalize=True)
        assert (part - overall).abs().max() < 0.02, f"{name} not stratified"
    again = data.make_splits(real_labels, groups, real_cfg, seed=7)
    assert split.equals(again)
    assert not split.equals(data.make_splits(real_labels, groups, real_cfg, seed=8))


def test_identical_image_content_joins_a_group(real_labels, real_cfg):
    a, b = real_labels["uuid"].iloc[0], real_labels["uuid"].iloc[1]
    groups = data.duplicate_groups(real_labels, real_cfg, hashes={a: "same", b: "same"})
    assert groups.iloc[0] == groups.iloc[1]
    split = data.make_splits(real_labels, groups, real_cfg, seed=0)
    assert split.iloc[0] == split.iloc[1]


def test_downsampling_counts(real_labels, real_cfg):
    cfg = real_cfg.model_copy(update={"downsample_max_per_category": 600})
    out = data.downsample(real_labels, cfg, seed=0)
    counts = out["cc3"].value_counts()
    assert counts["BLOUSES"] == 600 and counts["TANK_TOPS"] == 600
    assert counts["SHIRTS"] == 571 and counts["MINI_DRESSES"] == 577


def test_class_weights_balanced():
    weights = data.class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])


def test_prepare_tiny_dataset_writes_reusable_splits(tiny_dataset):
    cfg = DataConfig(data_dir=tiny_dataset)
    prepared = data.prepare(cfg, seed=1)
    assert prepared.duplicates["exact_duplicate_rows"] == 2
    total = sum(len(f) for f in prepared.frames.values())
    assert total == 18  # duplicates dropped, every unique uuid on exactly one side
    assert prepared.splits_file.is_file()
    first = pd.read_csv(prepared.splits_file)
    again = data.prepare(cfg, seed=1)
    assert pd.read_csv(again.splits_file).equals(first)
    assert again.codes("train").dtype == np.int64 and again.tags("train").shape[1] == 3


def test_missing_and_corrupt_images_are_named(tiny_dataset):
    labels = pd.read_parquet(tiny_dataset / "data.parquet")
    gone, broken = labels["uuid"].iloc[3], labels["uuid"].iloc[4]
    (tiny_dataset / f"{gone}.jpeg").unlink()
    (tiny_dataset / f"{broken}.jpeg").write_bytes(b"\xff\xd8not really a jpeg")
    cfg = DataConfig(data_dir=tiny_dataset)
    with pytest.raises(data.ImageError) as info:
        data.prepare(cfg, seed=1)
    assert gone in str(info.value) and broken in str(info.value) and "undecodable" in str(info.value)
    skipping = cfg.model_copy(update={"bad_images": "skip"})
    prepared = data.prepare(skipping, seed=2)
    kept = pd.concat(prepared.frames.values())["uuid"].tolist()
    assert gone not in kept and broken not in kept and len(kept) == 16


def test_png_and_jpg_extensions_are_found(tiny_dataset):
    labels = pd.read_parquet(tiny_dataset / "data.parquet")
    uuid = labels["uuid"].iloc[5]
    Image.open(tiny_dataset / f"{uuid}.jpeg").save(tiny_dataset / f"{uuid}.png")
    (tiny_dataset / f"{uuid}.jpeg").unlink()
    report = data.check_images([uuid], DataConfig(data_dir=tiny_dataset))
    assert report.paths[uuid].endswith(".png") and not report.bad
