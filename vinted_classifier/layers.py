"""The project's serialisable Keras classes: preprocessing layer, per-tag AUC, smoothed loss, augmenter.

Registered under the package ``vinted_classifier`` with their class names (``vinted_classifier>
BackbonePreprocess`` ...), the names saved ``.keras`` files refer to, so models saved before keep
loading. Importing this module imports Keras; :mod:`vinted_classifier.model` imports it only when
a model is built or loaded.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from .model import PREPROCESS_MODES

SERIALIZATION_PACKAGE = "vinted_classifier"
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

_register = keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)


@_register
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's ``preprocess_input`` as a layer, so raw [0, 255] RGB goes in."""

    def __init__(self, mode: str = "caffe", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"BackbonePreprocess mode {mode!r} is not one of {PREPROCESS_MODES}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":  # RGB -> BGR, subtract the ImageNet channel means
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        if self.mode == "tf":  # [0, 255] -> [-1, 1]
            return x / 127.5 - 1.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@_register
class TagAUC(keras.metrics.AUC):
    """ROC AUC of one column of a multi-label output (Keras's AUC has no class_id)."""

    def __init__(self, column: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.column = int(column)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[..., self.column], y_pred[..., self.column], sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "column": self.column}


@_register
class SparseCategoricalCrossentropySmoothed(keras.losses.Loss):
    """Sparse (integer-code) categorical crossentropy with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_cce_smoothed", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        one_hot = ops.one_hot(y_true, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@_register
class Augmenter(keras.Sequential):
    """Random augmentation that is OFF unless Keras says training=True.

    Keras's random image layers default to ``training=True`` (for tf.data use), so a
    plain ``model(x)`` (and the exported ``serve`` signature) would augment at inference.
    """

    def call(self, inputs, training=False, mask=None):
        return super().call(inputs, training=bool(training), mask=mask)


CUSTOM_OBJECTS: dict[str, type] = {
    cls.__name__: cls for cls in (BackbonePreprocess, TagAUC, SparseCategoricalCrossentropySmoothed, Augmenter)
}
