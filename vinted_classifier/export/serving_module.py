"""The exported ``tf.Module``: the model's variables and both serving signatures, decoding in-graph."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from ..contract import DEFAULT_SIGNATURE, PIXELS_SIGNATURE, TAGS_OUTPUT, RunLabels
from ..pipeline import decode_and_resize, resize_pixels


def _serving_outputs(model, labels: RunLabels, images):
    outputs = model(images, training=False)
    category = tf.cast(outputs[labels.category_output], tf.float32)
    tags = tf.cast(outputs[TAGS_OUTPUT], tf.float32)
    top2 = tf.math.top_k(category, k=2).indices
    names = tf.gather(tf.constant(labels.categories), top2)
    thresholds = tf.constant(labels.thresholds, dtype=tf.float32)
    return {
        labels.category_output: category,
        TAGS_OUTPUT: tags,
        "top2_codes": tf.cast(top2, tf.int64),
        "top2_names": names,
        "tag_flags": tf.cast(tags >= thresholds, tf.int64),
    }


def build_serving_module(model, labels: RunLabels):
    """A ``tf.Module`` holding the model's variables and both serving functions.

    Plain ``tf.saved_model.save`` of this module stores each variable once. (Keras's
    ``ExportArchive`` in 3.15 stores every variable twice, under ``variables/N`` and
    ``_all_variables/N``, doubling the file and the RAM of every server that loads it:
    keras-team/keras#23553.)
    """
    if len(labels.categories) < 2:
        raise ValueError("export needs at least 2 categories for the top-2 outputs")
    height, width = labels.image_size

    def from_bytes(image_bytes):
        images = tf.map_fn(
            lambda raw: decode_and_resize(raw, (height, width)),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
        )
        return _serving_outputs(model, labels, images)

    def from_pixels(input_image):
        images = resize_pixels(tf.cast(input_image, tf.float32) * 255.0, (height, width))
        return _serving_outputs(model, labels, images)

    module = tf.Module()
    # Track what the functions capture, and only that: the weights plus the random layers' seed
    # states. (Tracking the model itself would also save its optimizer and metric variables.)
    module.model_variables = list(model.variables)
    module.serve_bytes = tf.function(from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    module.serve_pixels = tf.function(
        from_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="input_image")]
    )
    return module


def save_serving_module(module, path: Path) -> None:
    tf.saved_model.save(
        module, str(path), signatures={DEFAULT_SIGNATURE: module.serve_bytes, PIXELS_SIGNATURE: module.serve_pixels}
    )
