"""The multi-task model: pretrained backbone -> pooled features -> category + tags heads.

Three Keras models share the same layer objects (functional API):
``feature_extractor`` (image -> feature vector, backbone preprocessing inside),
``head`` (feature vector -> {category, "tags"}) and ``model`` (image -> augmenter ->
feature_extractor -> head). Training ``head`` on cached features therefore trains
``model``'s head too. Keras/TensorFlow are imported lazily (nothing at import time);
the custom layer/metric/loss classes live in :mod:`vinted_classifier.layers`, imported with
Keras on first use (importing this module stays TensorFlow-free: ``tests/unit/test_precision.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vinted_classifier.config import ModelConfig
from vinted_classifier.contract import DEFAULT_CATEGORY_COLUMN, TAGS_OUTPUT
from vinted_classifier.weights import (
    apply_bundled_vgg19,
    bundled_path_from_label,
    is_bundled_format,
    load_bundled_vgg19,
    resolve_weights,
)

# backbone -> (keras.applications constructor name, preprocessing mode of its preprocess_input)
BACKBONES: dict[str, tuple[str, str]] = {
    "vgg16": ("VGG16", "caffe"),
    "vgg19": ("VGG19", "caffe"),
    "resnet50": ("ResNet50", "caffe"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
    # Keras's EfficientNet rescales/normalises inside the network; its preprocess_input is a no-op.
    "efficientnet_b0": ("EfficientNetB0", "none"),
}
PREPROCESS_MODES = ("caffe", "tf", "none")


def metric_safe(name: str) -> str:
    """Tag name as used in metric names: spaces (and other odd characters) become ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]", "_", name.strip())


def load_model(path: str | Path, compile: bool = True):
    """``keras.models.load_model`` with this project's custom classes registered."""
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    from .layers import CUSTOM_OBJECTS  # noqa: PLC0415 - imports Keras

    return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=compile)


@dataclass
class ModelBundle:
    """Everything ``build_model`` makes; the three models share layer objects."""

    model: Any
    feature_extractor: Any
    head: Any
    augmenter: Any | None
    weights_source: str
    backbone_layer_names: list[str]
    backbone: Any = None  # the keras.applications model (shares layers with feature_extractor)
    category_output: str = DEFAULT_CATEGORY_COLUMN
    categories: list[str] = field(default_factory=list)
    tag_names: list[str] = field(default_factory=list)


def _validate_labels(categories: list[str], tag_names: list[str], category_output: str) -> None:
    if len(categories) < 2:
        raise ValueError(f"need at least 2 categories, got {list(categories)}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories contain duplicates: {list(categories)}")
    if not tag_names:
        raise ValueError(f"need at least one tag name for the {TAGS_OUTPUT!r} output")
    safe = [metric_safe(t) for t in tag_names]
    if len(set(safe)) != len(safe):
        raise ValueError(f"tag names {list(tag_names)} collide once made metric-safe ({safe})")
    if not category_output or category_output == TAGS_OUTPUT:
        raise ValueError(f"category_output {category_output!r} must be a non-empty name other than {TAGS_OUTPUT!r}")


def build_augmenter(name: str = "augmenter"):
    """Modest photo augmentation; Keras random layers are identity outside training."""
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    from . import layers as custom  # noqa: PLC0415 - imports Keras, see above

    layers = keras.layers
    return custom.Augmenter(
        [
            layers.RandomFlip("horizontal", dtype="float32"),
            layers.RandomRotation(0.04, fill_mode="reflect", dtype="float32"),
            layers.RandomZoom((-0.1, 0.1), fill_mode="reflect", dtype="float32"),
            layers.RandomContrast(0.15, value_range=(0, 255), dtype="float32"),
            layers.RandomBrightness(0.1, value_range=(0, 255), dtype="float32"),
        ],
        name=name,
    )


def _pool(keras, backbone, pooling: str):
    """Pooled feature vector; ``pooling`` is one of ModelConfig's values, checked against the backbone already."""
    layers = keras.layers
    last = backbone.output
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="features_avg")(last)
    if pooling == "flatten":
        return layers.Flatten(name="features_flatten")(last)
    block4 = layers.GlobalAveragePooling2D(name="features_avg_block4")(backbone.get_layer("block4_pool").output)
    block5 = layers.GlobalAveragePooling2D(name="features_avg_block5")(last)
    return layers.Concatenate(name="features_block4_5")([block4, block5])


def build_head(
    n_features: int, model_cfg: ModelConfig, categories: list[str], tag_names: list[str], category_output: str
):
    """The head alone (feature vector -> both outputs): also what a search trial trains on cached features."""
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    feature_in = keras.Input(shape=(n_features,), dtype="float32", name="features")
    # Pooled VGG activations reach the hundreds; unnormalised they saturate the head (dead ReLUs,
    # constant outputs). BatchNorm puts every feature on a unit scale first.
    x = keras.layers.BatchNormalization(name="head_norm")(feature_in)
    x = keras.layers.Dropout(model_cfg.dropout, name="head_dropout_in")(x)
    if model_cfg.dense_units > 0:
        x = keras.layers.Dense(model_cfg.dense_units, activation="relu", name="head_dense")(x)
        x = keras.layers.Dropout(model_cfg.dropout, name="head_dropout")(x)
    category = keras.layers.Dense(len(categories), activation="softmax", dtype="float32", name=category_output)(x)
    tags = keras.layers.Dense(len(tag_names), activation="sigmoid", dtype="float32", name=TAGS_OUTPUT)(x)
    return keras.Model(feature_in, {category_output: category, TAGS_OUTPUT: tags}, name="head")


def build_model(
    model_cfg: ModelConfig, categories: list[str], tag_names: list[str], category_output: str = DEFAULT_CATEGORY_COLUMN
) -> ModelBundle:
    """Build the shared-layer trio (full model, feature extractor, head) for ``model_cfg``.

    Layers follow the current global precision policy; both outputs are float32 anyway.
    """
    categories, tag_names = list(categories), list(tag_names)
    _validate_labels(categories, tag_names, category_output)
    if model_cfg.pooling == "avg_block4_5" and not model_cfg.backbone.startswith("vgg"):
        raise ValueError(
            f"pooling 'avg_block4_5' needs a VGG backbone (block4_pool/block5_pool), not {model_cfg.backbone!r}; "
            "use pooling=avg"
        )
    feature_extractor, backbone, source = _build_feature_extractor(model_cfg)
    head = build_head(int(feature_extractor.output.shape[-1]), model_cfg, categories, tag_names, category_output)
    augmenter = build_augmenter() if model_cfg.augment else None
    return ModelBundle(
        model=_chain(model_cfg, augmenter, feature_extractor, head, category_output),
        feature_extractor=feature_extractor,
        head=head,
        augmenter=augmenter,
        weights_source=source,
        backbone_layer_names=[layer.name for layer in backbone.layers if layer.name not in ("image", "preprocess")],
        backbone=backbone,
        category_output=category_output,
        categories=categories,
        tag_names=tag_names,
    )


def _build_feature_extractor(model_cfg: ModelConfig):
    """(image -> pooled float32 features) model, the ``keras.applications`` backbone in it, its weights' source."""
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    from . import layers as custom  # noqa: PLC0415 - imports Keras, see above

    constructor_name, mode = BACKBONES[model_cfg.backbone]
    source, keras_weights = resolve_weights(model_cfg.backbone, model_cfg.weights, model_cfg.image_size)
    height, width = model_cfg.image_size
    image = keras.Input(shape=(height, width, 3), dtype="float32", name="image")
    # float32 so the mean subtraction is exact; the first conv casts to the compute dtype.
    preprocessed = custom.BackbonePreprocess(mode=mode, dtype="float32", name="preprocess")(image)
    constructor = getattr(keras.applications, constructor_name)
    backbone = constructor(include_top=False, weights=keras_weights, input_tensor=preprocessed)
    if is_bundled_format(source):
        apply_bundled_vgg19(backbone, load_bundled_vgg19(bundled_path_from_label(source)))
    pooled = _pool(keras, backbone, model_cfg.pooling)
    # Cast to float32 so cached features are plain float32 whatever the policy.
    features = keras.layers.Activation("linear", dtype="float32", name="features")(pooled)
    return keras.Model(image, features, name="feature_extractor"), backbone, source


def _chain(model_cfg: ModelConfig, augmenter, feature_extractor, head, category_output: str):
    """The full model: image -> augmenter (if any) -> feature extractor -> head, sharing their layers."""
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    height, width = model_cfg.image_size
    model_in = keras.Input(shape=(height, width, 3), dtype="float32", name="image")
    x = augmenter(model_in) if augmenter is not None else model_in
    outputs = head(feature_extractor(x))
    # Identity layers named after the outputs, so output_names (and exported signatures) read
    # ``cc3``/``tags`` rather than the nested model's name ``head``.
    return keras.Model(
        model_in,
        {
            name: keras.layers.Identity(dtype="float32", name=name)(outputs[name])
            for name in (category_output, TAGS_OUTPUT)
        },
        name="vinted_classifier",
    )


def feature_dim(bundle: ModelBundle) -> int:
    """Length of the pooled feature vector the head consumes."""
    return int(bundle.feature_extractor.output.shape[-1])


def _count(variables) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


# The last conv block of each backbone: what phase 2 unfreezes when the config names none.
LAST_BLOCK_PREFIXES: dict[str, list[str]] = {
    "vgg16": ["block5_"],
    "vgg19": ["block5_"],
    "resnet50": ["conv5_"],
    "mobilenet_v2": ["block_16_", "Conv_1"],
    "efficientnet_b0": ["block7", "top_"],
}


def set_trainable(
    bundle: ModelBundle, phase: Literal["head", "finetune"], finetune_prefixes: list[str]
) -> dict[str, int]:
    """Freeze the backbone (``head``) or unfreeze only prefixed backbone layers (``finetune``).

    BatchNormalization layers always stay frozen (Keras then runs them in inference mode,
    which keeps small fine-tuning batches from wrecking the ImageNet statistics).
    Recompile afterwards: Keras fixes the trainable set at compile time.
    Returns ``{"trainable_params", "non_trainable_params"}`` of the full model.
    """
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    if phase not in ("head", "finetune"):
        raise ValueError(f"unknown training phase {phase!r}; expected 'head' or 'finetune'")
    # Setting trainable on a model recurses into its layers, so go from outside in.
    bundle.model.trainable = True
    bundle.feature_extractor.trainable = True
    bundle.head.trainable = True
    backbone_layers = [bundle.backbone.get_layer(name) for name in bundle.backbone_layer_names]
    if phase == "head":
        for layer in backbone_layers:
            layer.trainable = False
    else:
        prefixes = tuple(finetune_prefixes)
        if not prefixes:
            raise ValueError("phase 'finetune' needs at least one layer-name prefix (e.g. 'block5_')")
        unfrozen = []
        for layer in backbone_layers:
            wanted = layer.name.startswith(prefixes) and not isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = wanted
            if wanted and layer.weights:
                unfrozen.append(layer.name)
        if not unfrozen:
            raise ValueError(
                f"no backbone layer with weights starts with {list(prefixes)}; "
                f"backbone layers look like {bundle.backbone_layer_names[:3]} ... {bundle.backbone_layer_names[-3:]}"
            )
    return {
        "trainable_params": _count(bundle.model.trainable_weights),
        "non_trainable_params": _count(bundle.model.non_trainable_weights),
    }


def tag_metric_names(tag_names: list[str]) -> list[str]:
    """Per-tag metric names (before Keras prefixes them with the output name)."""
    return [f"{kind}_{metric_safe(tag)}" for tag in tag_names for kind in ("precision", "recall", "auc")]


def compile_model(
    keras_model,
    *,
    category_output: str,
    n_tags: int,
    tag_names: list[str],
    learning_rate: float,
    loss_weights: dict[str, float],
    label_smoothing: float = 0.0,
):
    """Compile with Adam, per-output losses and metrics (works for the full model and the head).

    History keys come out as ``<output>_<metric>``: ``cc3_loss``, ``cc3_top1``, ``cc3_top2``,
    ``tags_precision_<tag>``, ``tags_recall_<tag>``, ``tags_auc_<tag>`` (``val_`` prefixed for
    validation). Label smoothing applies to the category output only.
    """
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    _check_compile_arguments(keras_model, category_output, n_tags, tag_names, loss_weights, label_smoothing)
    keras_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss={category_output: _category_loss(label_smoothing), TAGS_OUTPUT: keras.losses.BinaryCrossentropy()},
        loss_weights={name: float(loss_weights.get(name, 1.0)) for name in (category_output, TAGS_OUTPUT)},
        metrics={
            category_output: [
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"),
            ],
            TAGS_OUTPUT: _tag_metrics(tag_names),
        },
    )
    return keras_model


def _check_compile_arguments(
    keras_model,
    category_output: str,
    n_tags: int,
    tag_names: list[str],
    loss_weights: dict[str, float],
    label_smoothing: float,
) -> None:
    if len(tag_names) != n_tags:
        raise ValueError(f"n_tags={n_tags} but {len(tag_names)} tag names were given: {list(tag_names)}")
    outputs = {category_output, TAGS_OUTPUT}
    model_outputs = set(keras_model.output.keys()) if isinstance(keras_model.output, dict) else None
    if model_outputs is not None and model_outputs != outputs:
        raise ValueError(f"model {keras_model.name!r} has outputs {sorted(model_outputs)}, expected {sorted(outputs)}")
    unknown = set(loss_weights) - outputs
    if unknown:
        raise ValueError(f"loss_weights has keys {sorted(unknown)} that are not model outputs {sorted(outputs)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _category_loss(label_smoothing: float):
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    from . import layers as custom  # noqa: PLC0415 - imports Keras, see above

    if label_smoothing > 0:
        return custom.SparseCategoricalCrossentropySmoothed(label_smoothing=label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def _tag_metrics(tag_names: list[str]) -> list[Any]:
    """Precision, recall and ROC AUC of each tag column, named after the tag."""
    # Keras on first use: importing this module must not import TensorFlow (tests/unit/test_precision.py).
    import keras  # noqa: PLC0415

    from . import layers as custom  # noqa: PLC0415 - imports Keras, see above

    metrics: list[Any] = []
    for index, tag in enumerate(tag_names):
        safe = metric_safe(tag)
        metrics += [
            keras.metrics.Precision(class_id=index, name=f"precision_{safe}"),
            keras.metrics.Recall(class_id=index, name=f"recall_{safe}"),
            custom.TagAUC(column=index, name=f"auc_{safe}"),
        ]
    return metrics
