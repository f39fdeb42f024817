"""Rebuilding a trained model under another export precision, with its weights copied over."""

from __future__ import annotations

import keras

from ..config import ModelConfig
from ..contract import RunLabels
from ..model import build_model
from ..precision import use_precision

# Keras policy that makes a graph compute in each export precision (variables stay float32).
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def compute_precision(model) -> str:
    """The low-precision dtype a Keras model computes in (``bfloat16``/``float16``), else ``float32``."""
    dtypes = {layer.compute_dtype for layer in model._flatten_layers(include_self=False, recursive=True)}
    for name in ("bfloat16", "float16"):
        if name in dtypes:
            return name
    return "float32"


def copy_weights(source, target) -> None:
    """Copy a trained model's weights into the same architecture rebuilt (for another precision).

    At the top level, layers are matched by name: those names are ours, and the trained model
    may hold training-only layers (the augmenter) that the rebuilt one lacks. Inside nested
    models (feature extractor, backbone, head) layers are matched by position: both sides come
    from the same constructor, so their order agrees, while Keras's automatic names do not
    (EfficientNet's ``normalization`` is ``normalization_1`` when built a second time in one
    process). Every pair must agree on layer class and weight shapes.
    """
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise ValueError(f"layer {layer.name!r} of the rebuilt model has no counterpart in the trained model")
        _copy_layer(by_name[layer.name], layer)


def _copy_layer(source, target) -> None:
    if isinstance(target, keras.Model) and isinstance(source, keras.Model):
        _copy_nested(source, target)  # layer by layer, so an error names the innermost layer
        return
    if type(source) is not type(target) or [w.shape for w in source.weights] != [w.shape for w in target.weights]:
        raise ValueError(
            f"layer {target.name!r} of the rebuilt model ({type(target).__name__}, weight shapes "
            f"{[tuple(w.shape) for w in target.weights]}) does not match {source.name!r} of the trained "
            f"model ({type(source).__name__}, {[tuple(w.shape) for w in source.weights]})"
        )
    target.set_weights(source.get_weights())


def _copy_nested(source, target) -> None:
    sources = [layer for layer in source.layers if layer.weights]
    targets = [layer for layer in target.layers if layer.weights]
    if len(sources) != len(targets):
        raise ValueError(
            f"nested model {target.name!r}: the rebuilt one has {len(targets)} layers with weights, "
            f"the trained {source.name!r} has {len(sources)}"
        )
    for source_layer, target_layer in zip(sources, targets, strict=True):
        _copy_layer(source_layer, target_layer)


def model_in_precision(model, model_cfg: ModelConfig | None, labels: RunLabels, precision: str):
    """The same weights in a graph computing in ``precision`` (float32, bfloat16 or float16).

    The model is rebuilt from its config under the matching Keras policy (layers that the
    architecture pins to float32, like the outputs, stay float32), then its weights are copied.
    A model that already computes in ``precision`` is returned as it is.
    """
    if precision not in PRECISION_POLICIES:
        raise ValueError(f"export precision {precision!r}: expected one of {', '.join(PRECISION_POLICIES)}")
    if compute_precision(model) == precision:
        return model
    if model_cfg is None:
        raise ValueError(
            f"the model computes in {compute_precision(model)}; exporting it as {precision} "
            "needs its ModelConfig to rebuild it (pass model_cfg)"
        )
    inference_cfg = model_cfg.model_copy(update={"weights": "none", "augment": False})
    with use_precision(PRECISION_POLICIES[precision]):
        rebuilt = build_model(inference_cfg, labels.categories, labels.tags, labels.category_output).model
    copy_weights(model, rebuilt)
    return rebuilt
