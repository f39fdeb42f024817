"""tf.data pipeline: shapes, dtypes, label encodings, aspect-preserving resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vinted_classifier import data, pipeline
from vinted_classifier.config import DataConfig


def test_dataset_yields_images_and_named_labels(tiny_dataset):
    prepared = data.prepare(DataConfig(data_dir=tiny_dataset), seed=0)
    ds = pipeline.make_dataset(
        prepared.paths("train"),
        image_size=(48, 32),
        batch_size=4,
        codes=prepared.codes("train"),
        tags=prepared.tags("train"),
    )
    images, targets = next(iter(ds))
    assert images.shape == (4, 48, 32, 3) and images.dtype.name == "float32"
    assert set(targets) == {"cc3", "tags"}
    assert targets["cc3"].dtype.name == "int64" and targets["tags"].dtype.name == "float32"
    np.testing.assert_array_equal(targets["cc3"].numpy(), prepared.codes("train")[:4])
    np.testing.assert_array_equal(targets["tags"].numpy(), prepared.tags("train")[:4])
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    total = sum(int(b[0].shape[0]) for b in ds)
    assert total == len(prepared.paths("train"))


def test_sample_weights_are_keyed_by_output(tiny_dataset):
    prepared = data.prepare(DataConfig(data_dir=tiny_dataset), seed=0)
    weights = np.arange(len(prepared.paths("train")), dtype=np.float32)
    ds = pipeline.make_dataset(
        prepared.paths("train"),
        image_size=(16, 16),
        batch_size=3,
        codes=prepared.codes("train"),
        tags=prepared.tags("train"),
        sample_weights=weights,
    )
    _, _, w = next(iter(ds))
    assert w["cc3"].numpy().tolist() == [0.0, 1.0, 2.0] and w["tags"].numpy().tolist() == [1.0, 1.0, 1.0]


def test_portrait_image_is_padded_not_squashed():
    pixels = np.full((200, 100, 3), 255, np.uint8)  # white portrait 2:1
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    out = pipeline.decode_and_resize(tf.constant(buffer.getvalue()), (100, 100)).numpy()
    assert out.shape == (100, 100, 3)
    column_mean = out.mean(axis=(0, 2))
    assert column_mean[:20].max() < 1.0 and column_mean[-20:].max() < 1.0  # padded sides
    assert column_mean[30:70].min() > 250  # the photo, full height, centred


def test_grey_and_rgba_images_become_rgb():
    for mode in ("L", "RGBA"):
        buffer = io.BytesIO()
        Image.new(mode, (10, 12)).save(buffer, format="PNG")
        out = pipeline.decode_and_resize(tf.constant(buffer.getvalue()), (8, 8))
        assert out.shape == (8, 8, 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 paths but 1 codes"):
        pipeline.make_dataset(["a", "b"], image_size=(8, 8), batch_size=1, codes=np.array([0]), tags=np.zeros((1, 3)))


def test_resize_is_identical_eager_and_traced():
    """The SavedModel traces this function; its pixels must equal training's (no train/serve skew)."""
    image = tf.random.uniform([441, 319, 3], 0, 255, seed=1)
    eager = pipeline.resize_pixels(image, (160, 128))
    traced = tf.function(
        lambda x: pipeline.resize_pixels(x, (160, 128)), input_signature=[tf.TensorSpec([None, None, 3], tf.float32)]
    )(image)
    np.testing.assert_array_equal(eager.numpy(), traced.numpy())
