"""On-disk feature cache: exact rows and labels, views, reuse, atomic files, class weights."""

from __future__ import annotations

import numpy as np
import pytest

from vinted_classifier import model as M
from vinted_classifier.config import ModelConfig
from vinted_classifier.features import feature_dataset, load_feature_cache, write_feature_cache

CATEGORIES = ["BLOUSES", "DRESSES", "JEANS"]
TAGS = ["polka dot", "floral", "checker"]
N = 10


@pytest.fixture(scope="module")
def bundle():
    cfg = ModelConfig(
        backbone="vgg16",
        weights="none",
        image_height=32,
        image_width=32,
        pooling="avg",
        dense_units=8,
        dropout=0.0,
        augment=True,
    )
    return M.build_model(cfg, CATEGORIES, TAGS)


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (N, 32, 32, 3)).astype(np.float32)
    codes = np.arange(N) % len(CATEGORIES)
    tags = rng.integers(0, 2, (N, len(TAGS))).astype(np.float32)
    return x, codes, tags


def image_dataset(examples, batch: int = 4):
    import tensorflow as tf

    x, codes, tags = examples
    return tf.data.Dataset.from_tensor_slices((x, {"cc3": codes, "tags": tags})).batch(batch)


def read_all(cache, **kwargs):
    parts = list(feature_dataset(cache, batch_size=3, category_output="cc3", **kwargs))
    features = np.concatenate([np.asarray(p[0]) for p in parts])
    codes = np.concatenate([np.asarray(p[1]["cc3"]) for p in parts])
    tags = np.concatenate([np.asarray(p[1]["tags"]) for p in parts])
    return features, codes, tags, parts


def test_rows_equal_the_extractor_and_carry_labels(bundle, examples, tmp_path):
    x, codes, tags = examples
    cache = write_feature_cache(
        bundle,
        image_dataset(examples),
        tmp_path / "train.f32",
        category_output="cc3",
        augment_views=2,
        key={"run": "a"},
    )
    dim = M.feature_dim(bundle)
    assert (cache.rows, cache.feature_dim, cache.n_tags) == (3 * N, dim, len(TAGS))
    assert (tmp_path / "train.f32").stat().st_size == 3 * N * (dim + 1 + len(TAGS)) * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.f32", "train.json"], "no part files left"

    # A known length: Keras counts an epoch's steps instead of probing for the end of the data.
    assert int(feature_dataset(cache, batch_size=4, category_output="cc3").cardinality()) == -(-3 * N // 4)
    features, got_codes, got_tags, _ = read_all(cache)
    np.testing.assert_allclose(features[:N], bundle.feature_extractor.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_codes, np.tile(codes, 3))
    assert got_codes.dtype == np.int64
    np.testing.assert_array_equal(got_tags, np.tile(tags, (3, 1)))
    # The augmented views are different pictures of the same images.
    assert not np.allclose(features[N : 2 * N], features[:N])
    assert not np.allclose(features[2 * N :], features[N : 2 * N])


@pytest.mark.parametrize("buffer", [100, 4], ids=["rows-fit-the-buffer", "windowed"])
def test_shuffle_is_a_seeded_permutation(bundle, examples, tmp_path, buffer):
    cache = write_feature_cache(bundle, image_dataset(examples), tmp_path / "f.f32", category_output="cc3")
    plain, plain_codes, _, _ = read_all(cache)
    shuffled, shuffled_codes, _, _ = read_all(cache, shuffle_buffer=buffer, seed=3)
    again, _, _, _ = read_all(cache, shuffle_buffer=buffer, seed=3)
    np.testing.assert_array_equal(shuffled, again)
    assert not np.array_equal(shuffled, plain)
    order = [int(np.flatnonzero((plain == row).all(axis=1))[0]) for row in shuffled]
    assert sorted(order) == list(range(N))
    np.testing.assert_array_equal(shuffled_codes, plain_codes[order])


def test_class_weights_follow_the_codes(bundle, examples, tmp_path):
    cache = write_feature_cache(bundle, image_dataset(examples), tmp_path / "f.f32", category_output="cc3")
    weights = np.array([0.5, 2.0, 3.0], np.float32)
    _, codes, _, parts = read_all(cache, class_weights=weights)
    per_row = np.concatenate([np.asarray(p[2]["cc3"]) for p in parts])
    np.testing.assert_array_equal(per_row, weights[codes])
    assert all(np.all(np.asarray(p[2]["tags"]) == 1.0) for p in parts)


def test_complete_cache_is_reused_and_a_changed_key_rebuilds(bundle, examples, tmp_path, caplog):
    path = tmp_path / "f.f32"
    first = write_feature_cache(bundle, image_dataset(examples), path, category_output="cc3", key={"size": 32})
    stamp = path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="vinted_classifier.features"):
        again = write_feature_cache(bundle, image_dataset(examples), path, category_output="cc3", key={"size": 32})
    assert again == first and path.stat().st_mtime_ns == stamp
    assert "reusing feature cache" in caplog.text
    assert load_feature_cache(path, {"size": 64, "augment_views": 0}) is None
    rebuilt = write_feature_cache(
        bundle, image_dataset(examples, batch=5).take(1), path, category_output="cc3", key={"size": 64}
    )
    assert rebuilt.rows == 5 and load_feature_cache(path, {"size": 64, "augment_views": 0}) == rebuilt


def test_truncated_file_is_not_reused(bundle, examples, tmp_path):
    path = tmp_path / "f.f32"
    write_feature_cache(bundle, image_dataset(examples), path, category_output="cc3")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)
    assert load_feature_cache(path, {"augment_views": 0}) is None


def test_empty_dataset_is_an_error_and_leaves_nothing(bundle, examples, tmp_path):
    with pytest.raises(ValueError, match="no images to cache features for"):
        write_feature_cache(bundle, image_dataset(examples).take(0), tmp_path / "f.f32", category_output="cc3")
    assert list(tmp_path.iterdir()) == []
