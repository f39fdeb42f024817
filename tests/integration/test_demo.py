"""The synthetic demo dataset: real-file formats, real-file statistics, determinism, crash safety."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vinted_classifier import demo
from vinted_classifier.demo import dataset

TAGS = ["polka dot", "floral", "checker"]
UUID_RE = r"^[0-9a-f]{5}_[A-Za-z0-9]{24}$"
PARQUETS = ("data", "test", "test_labels", "example_predictions")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """scale 0.05: ~172 rows + 21 test items, with images (a few seconds)."""
    out = tmp_path_factory.mktemp("tiny") / "demo"
    return demo.generate_demo_dataset(out, scale=0.05, seed=3, workers=1)


@pytest.fixture(scope="module")
def labels03(tmp_path_factory) -> dict:
    """scale 0.3 labels only, for statistics."""
    out = tmp_path_factory.mktemp("labels") / "demo"
    summary = demo.generate_demo_dataset(out, scale=0.3, seed=1, images=False)
    return {
        "summary": summary,
        "data": pd.read_parquet(out / "data.parquet"),
        "test": pd.read_parquet(out / "test_labels.parquet"),
    }


@pytest.fixture(scope="module")
def real(reference_dir) -> pd.DataFrame:
    return pd.read_parquet(reference_dir / "data.parquet")


def test_layout_and_summary(tiny):
    out = Path(tiny["out_dir"])
    names = {p.name for p in out.iterdir()}
    assert {f"{n}.parquet" for n in PARQUETS} | {"README.txt"} <= names
    assert tiny["n_unique"] == round(3436 * 0.05) == 172
    assert tiny["n_duplicates"] == round(111 * 0.05) == 6
    assert tiny["n_rows"] == 178 and tiny["n_test"] == round(429 * 0.05) == 21
    assert tiny["n_images"] == 172 + 21 == len([n for n in names if n.endswith(".jpeg")])
    assert tiny["seconds"] > 0 and tiny["paths"]["data"] == str(out / "data.parquet")
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    # no temp folders left beside the output
    assert [p.name for p in out.parent.iterdir()] == ["demo"]


@pytest.mark.parametrize(
    "name, real_name",
    [("data", "data"), ("test", "test"), ("test_labels", "data"), ("example_predictions", "example_predictions")],
)
def test_schema_matches_real_files(tiny, name, real_name, reference_dir):
    ours = pq.read_schema(Path(tiny["out_dir"]) / f"{name}.parquet").remove_metadata()
    theirs = pq.read_schema(reference_dir / f"{real_name}.parquet").remove_metadata()
    assert ours.equals(theirs), f"{name}: {ours} != {theirs}"


def test_synthetic_metadata(tiny):
    for name in PARQUETS:
        meta = pq.read_schema(Path(tiny["out_dir"]) / f"{name}.parquet").metadata
        assert meta[b"vinted_classifier.synthetic"] == b"true"
        assert meta[b"vinted_classifier.generator"] == b"demo v1 seed=3 scale=0.05"


def test_uuids_format_disjoint_and_order(tiny):
    out = Path(tiny["out_dir"])
    data, test = pd.read_parquet(out / "data.parquet"), pd.read_parquet(out / "test.parquet")
    labels, example = pd.read_parquet(out / "test_labels.parquet"), pd.read_parquet(out / "example_predictions.parquet")
    for ids in (data.uuid, test.uuid):
        assert ids.str.match(UUID_RE).all()
        assert (ids.str.len() == 30).all()
    assert not set(data.uuid) & set(test.uuid)
    assert list(labels.uuid) == list(test.uuid) == list(example.uuid)
    assert example.category1.between(0, 4).all() and example.category2.between(0, 4).all()
    assert (example.category1 != example.category2).all()
    assert set(np.unique(example[TAGS])) <= {0, 1}
    for uid in list(data.uuid[:3]) + list(test.uuid[:3]):
        assert (out / f"{uid}.jpeg").is_file()


def test_duplicates_are_exact_trailing_rows(tiny, labels03):
    for frame, n_dup in (
        (pd.read_parquet(Path(tiny["out_dir"]) / "data.parquet"), 6),
        (labels03["data"], round(111 * 0.3)),
    ):
        dup = frame.duplicated()
        assert dup.sum() == n_dup == frame.uuid.duplicated().sum()
        assert dup.iloc[-n_dup:].all() and not dup.iloc[:-n_dup].any()
        assert 0.025 < n_dup / len(frame) < 0.035


def test_statistics_follow_real_file(labels03, real):
    ours = labels03["data"]
    assert len(ours) == round(3436 * 0.3) + round(111 * 0.3)
    real_share = real.cc3.value_counts(normalize=True)
    our_share = ours.cc3.value_counts(normalize=True)
    assert set(our_share.index) == set(real_share.index)
    assert ((our_share - real_share).abs() / real_share).max() < 0.02  # within 2% relative
    assert (ours[TAGS].sum(axis=1) <= 1).all()
    rates = ours.groupby("cc3")[TAGS].mean() - real.groupby("cc3")[TAGS].mean()
    assert rates.abs().max().max() < 0.03

    def corrs(df):
        shirts = (df.cc3 == "SHIRTS").astype(float)
        return np.array([df.checker.corr(shirts), df.floral.corr(df["polka dot"]), df.checker.corr(df["polka dot"])])

    np.testing.assert_allclose(corrs(ours), corrs(real), atol=0.08)
    np.testing.assert_allclose(corrs(ours), [0.40, -0.34, -0.33], atol=0.09)
    assert set(ours.color1) <= set(real.color1)
    # the big colours appear in roughly the real proportions
    for colour in ("BLACK", "VARIOUS", "BLUE"):
        assert abs((ours.color1 == colour).mean() - (real.color1 == colour).mean()) < 0.04


def test_scale_one_counts_match_real_without_files():
    labels = demo.make_labels(scale=1.0, seed=0)
    data = pd.DataFrame(labels["data"])
    assert len(data) == 3547 and data.uuid.nunique() == 3436 and labels["n_test"] == 429
    uniq = data.drop_duplicates()
    assert uniq.cc3.value_counts().to_dict() == demo.CATEGORY_COUNTS
    assert uniq.groupby("cc3").checker.sum()["SHIRTS"] == 337
    assert (data[TAGS].sum(axis=1) == 0).sum() == pytest.approx(952, abs=15)


def test_determinism(tmp_path, tiny):
    again = demo.generate_demo_dataset(tmp_path / "again", scale=0.05, seed=3, workers=2)
    other = demo.generate_demo_dataset(tmp_path / "other", scale=0.05, seed=4, images=False)
    a, b, c = Path(tiny["out_dir"]), Path(again["out_dir"]), Path(other["out_dir"])
    for name in PARQUETS:
        assert pq.read_table(a / f"{name}.parquet").equals(pq.read_table(b / f"{name}.parquet"))
    data = pd.read_parquet(a / "data.parquet")
    for uid in data.uuid.iloc[:4]:  # single process vs two workers: byte-identical images
        assert (
            hashlib.sha256((a / f"{uid}.jpeg").read_bytes()).digest()
            == hashlib.sha256((b / f"{uid}.jpeg").read_bytes()).digest()
        )
    assert not set(pd.read_parquet(c / "data.parquet").uuid) & set(data.uuid)


def test_images_are_rgb_jpeg_portrait(tiny):
    out = Path(tiny["out_dir"])
    data = pd.read_parquet(out / "data.parquet").drop_duplicates()
    sizes = set()
    for uid in data.uuid.iloc[:25]:
        with Image.open(out / f"{uid}.jpeg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 300 <= im.width <= 350 and 400 <= im.height <= 450
            sizes.add(im.size)
    assert len(sizes) > 5  # sizes vary per image


def test_patterns_and_colours_show():
    """Black garments look dark; patterned garments have more fine detail than plain ones."""
    rng = np.random.default_rng(0)
    plain, dotted = [], []
    for k in range(6):
        for tag, bucket in ((None, plain), ("polka dot", dotted)):
            img = np.asarray(demo.render_garment("BLOUSES", "BLUE", tag, np.random.default_rng([9, k])), float)
            centre = img[img.shape[0] // 3 : img.shape[0] * 2 // 3, img.shape[1] // 3 : img.shape[1] * 2 // 3]
            bucket.append(np.abs(np.diff(centre, axis=1)).mean())
    assert np.median(dotted) > 1.5 * np.median(plain)
    dark = np.asarray(demo.render_garment("SHIRTS", "BLACK", None, rng), float)
    light = np.asarray(demo.render_garment("SHIRTS", "WHITE", None, rng), float)

    def centre(img):
        h, w = img.shape[:2]
        return img[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean()

    assert centre(dark) < centre(light) - 80


def test_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty; pass force=True"):
        demo.generate_demo_dataset(target, scale=0.01, images=False)
    assert demo.main([str(target), "--scale", "0.01", "--no-images"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "mine"
    assert demo.main([str(target), "--scale", "0.01", "--no-images", "--force"]) == 0
    assert not (target / "keep.txt").exists() and (target / "data.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_empty_target_and_bad_arguments(tmp_path):
    (tmp_path / "empty").mkdir()
    summary = demo.generate_demo_dataset(tmp_path / "empty", scale=0.01, images=False)
    assert summary["n_images"] == 0 and (tmp_path / "empty" / "test.parquet").exists()
    with pytest.raises(ValueError, match="scale must be > 0"):
        demo.generate_demo_dataset(tmp_path / "x", scale=0)
    with pytest.raises(ValueError, match="label_noise"):
        demo.generate_demo_dataset(tmp_path / "x", label_noise=1.5)
    assert not (tmp_path / "x").exists()


def test_label_noise_changes_drawn_category(tmp_path):
    jobs = [(str(tmp_path / f"{k}.jpeg"), "SHIRTS", "BLUE", None, 0, k, 1.0 - 1e-9) for k in range(3)]
    assert all(dataset._render_job(j) for j in jobs)
    assert not dataset._render_job((str(tmp_path / "z.jpeg"), "SHIRTS", "BLUE", None, 0, 0, 0.0))
