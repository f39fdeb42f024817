"""Multi-task model: outputs/dtypes under each policy, pooling, freezing, metrics, save/load, learning."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vinted_classifier import layers
from vinted_classifier import model as M
from vinted_classifier.config import ModelConfig
from vinted_classifier.precision import use_precision

CATEGORIES = ["BLOUSES", "DRESSES", "JEANS"]
TAGS = ["polka dot", "floral", "checker"]


pytestmark = pytest.mark.usefixtures("reset_policy")  # tests/conftest.py


def cfg(**overrides) -> ModelConfig:
    values = dict(
        backbone="vgg16",
        weights="none",
        image_height=32,
        image_width=32,
        pooling="avg",
        dense_units=8,
        dropout=0.2,
        augment=False,
    )
    return ModelConfig(**(values | overrides))


def images(n: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, height, width, 3)).astype(np.float32)


def labels(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"cc3": np.arange(n) % len(CATEGORIES), "tags": rng.integers(0, 2, (n, len(TAGS))).astype(np.float32)}


def compile_for(keras_model, lr: float = 1e-3, **kwargs):
    return M.compile_model(
        keras_model,
        category_output="cc3",
        n_tags=len(TAGS),
        tag_names=TAGS,
        learning_rate=lr,
        loss_weights={"cc3": 1.0, "tags": 1.0},
        **kwargs,
    )


EXPECTED_METRICS = {
    "loss",
    "cc3_loss",
    "tags_loss",
    "cc3_top1",
    "cc3_top2",
    *(f"tags_{kind}_{tag}" for tag in ("polka_dot", "floral", "checker") for kind in ("precision", "recall", "auc")),
}


@pytest.mark.parametrize(
    ("policy", "compute"),
    [("float32", "float32"), ("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")],
)
def test_outputs_named_shaped_float32_under_policy(policy, compute):
    with use_precision(policy):
        bundle = M.build_model(cfg(backbone="mobilenet_v2", augment=True), CATEGORIES, TAGS, category_output="cc3")
        x = images(4)
        out = bundle.model.predict(x, verbose=0)
        features = bundle.feature_extractor.predict(x, verbose=0)
        head_out = bundle.head.predict(features, verbose=0)
    assert bundle.model.input.name == "image" and tuple(bundle.model.input.shape) == (None, 32, 32, 3)
    assert bundle.model.output_names == ["cc3", "tags"]
    assert set(out) == set(head_out) == {"cc3", "tags"}
    assert out["cc3"].shape == (4, 3) and out["tags"].shape == (4, 3)
    assert out["cc3"].dtype == np.float32 and out["tags"].dtype == np.float32
    assert features.dtype == np.float32 and features.shape == (4, M.feature_dim(bundle)) == (4, 1280)
    np.testing.assert_allclose(out["cc3"].sum(axis=1), 1.0, rtol=1e-5)
    assert ((out["tags"] > 0) & (out["tags"] < 1)).all()
    assert bundle.backbone.get_layer("Conv1").compute_dtype == compute
    np.testing.assert_allclose(head_out["cc3"], out["cc3"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("pooling", "size", "dim"),
    [("avg", (64, 32), 512), ("flatten", (64, 32), 2 * 1 * 512), ("avg_block4_5", (64, 32), 1024)],
)
def test_pooling_feature_dims(pooling, size, dim):
    bundle = M.build_model(cfg(pooling=pooling, image_height=size[0], image_width=size[1]), CATEGORIES, TAGS)
    assert M.feature_dim(bundle) == dim
    assert tuple(bundle.head.input.shape) == (None, dim)
    assert bundle.feature_extractor.predict(images(2, *size), verbose=0).shape == (2, dim)


@pytest.mark.parametrize(("backbone", "mode", "dim"), [("resnet50", "caffe", 2048), ("efficientnet_b0", "none", 1280)])
def test_other_backbones_build_with_their_preprocessing(backbone, mode, dim):
    bundle = M.build_model(cfg(backbone=backbone), CATEGORIES, TAGS)
    assert bundle.feature_extractor.get_layer("preprocess").mode == mode
    assert M.feature_dim(bundle) == dim
    assert bundle.weights_source == "none"
    assert "image" not in bundle.backbone_layer_names and "preprocess" not in bundle.backbone_layer_names


def test_preprocess_layer_matches_keras_preprocess_input():
    layer_cls = layers.BackbonePreprocess
    x = images(2)
    np.testing.assert_allclose(
        np.asarray(layer_cls(mode="caffe")(x)),
        keras.applications.vgg19.preprocess_input(x.copy()),
        rtol=1e-6,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        np.asarray(layer_cls(mode="tf")(x)),
        keras.applications.mobilenet_v2.preprocess_input(x.copy()),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="mode 'torch' is not one of"):
        layer_cls(mode="torch")


def test_avg_block4_5_uses_both_blocks():
    bundle = M.build_model(cfg(pooling="avg_block4_5", image_height=64, image_width=64), CATEGORIES, TAGS)

    x = images(2, 64, 64)
    block4 = keras.Model(bundle.feature_extractor.input, bundle.backbone.get_layer("block4_pool").output)
    features = bundle.feature_extractor.predict(x, verbose=0)
    np.testing.assert_allclose(features[:, :512], block4.predict(x, verbose=0).mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_build_errors():
    with pytest.raises(ValueError, match="avg_block4_5.*VGG backbone.*'resnet50'"):
        M.build_model(cfg(backbone="resnet50", pooling="avg_block4_5"), CATEGORIES, TAGS)
    with pytest.raises(ValueError, match="at least 2 categories"):
        M.build_model(cfg(), ["ONLY"], TAGS)
    with pytest.raises(ValueError, match="collide"):
        M.build_model(cfg(), CATEGORIES, ["polka dot", "polka_dot"])
    with pytest.raises(ValueError, match="other than 'tags'"):
        M.build_model(cfg(), CATEGORIES, TAGS, category_output="tags")


def _params(layers) -> int:
    return int(sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights))


def test_set_trainable_phases():
    bundle = M.build_model(cfg(), CATEGORIES, TAGS)
    # The head's BatchNorm moving mean/variance never train; everything else in the head does.
    head_stats = _params([bundle.head.get_layer("head_norm")]) // 2
    assert head_stats > 0
    head_params = bundle.head.count_params() - head_stats
    frozen_params = bundle.backbone.count_params() + head_stats

    counts = M.set_trainable(bundle, "head", ["block5_"])
    assert counts == {"trainable_params": head_params, "non_trainable_params": frozen_params}
    assert all(not bundle.backbone.get_layer(n).trainable for n in bundle.backbone_layer_names)
    assert bundle.backbone.trainable_weights == []

    counts = M.set_trainable(bundle, "finetune", ["block5_"])
    trainable = sorted({v.path.split("/")[0] for v in bundle.backbone.trainable_weights})
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3"]
    block5 = _params(bundle.backbone.get_layer(f"block5_conv{i}") for i in (1, 2, 3))
    assert counts == {"trainable_params": head_params + block5, "non_trainable_params": frozen_params - block5}

    # Back to head: everything in the backbone frozen again.
    assert M.set_trainable(bundle, "head", [])["trainable_params"] == head_params
    with pytest.raises(ValueError, match=r"no backbone layer with weights starts with \['conv5_'\]"):
        M.set_trainable(bundle, "finetune", ["conv5_"])
    with pytest.raises(ValueError, match="unknown training phase 'all'"):
        M.set_trainable(bundle, "all", [])


def test_finetune_keeps_batchnorm_frozen():
    bundle = M.build_model(cfg(backbone="mobilenet_v2"), CATEGORIES, TAGS)
    M.set_trainable(bundle, "finetune", ["block_16_", "Conv_1"])
    assert bundle.backbone.get_layer("block_16_expand").trainable
    assert bundle.backbone.get_layer("Conv_1").trainable
    assert not bundle.backbone.get_layer("block_16_expand_BN").trainable
    assert not bundle.backbone.get_layer("Conv_1_bn").trainable
    assert not bundle.backbone.get_layer("block_15_expand").trainable


def test_metric_names_in_history_for_head_model():
    bundle = M.build_model(cfg(), CATEGORIES, TAGS)
    compile_for(bundle.head)
    features = np.random.default_rng(0).normal(size=(6, M.feature_dim(bundle))).astype(np.float32)
    y = labels(6)
    history = bundle.head.fit(features, y, validation_data=(features, y), epochs=1, batch_size=3, verbose=0)
    assert set(history.history) == EXPECTED_METRICS | {f"val_{name}" for name in EXPECTED_METRICS}
    assert M.tag_metric_names(["polka dot"]) == ["precision_polka_dot", "recall_polka_dot", "auc_polka_dot"]


def test_training_head_on_features_trains_full_model():
    bundle = M.build_model(cfg(dropout=0.0), CATEGORIES, TAGS)
    M.set_trainable(bundle, "head", [])
    compile_for(bundle.head, lr=0.05)
    x = images(6)
    before = bundle.model.predict(x, verbose=0)["cc3"]
    features = bundle.feature_extractor.predict(x, verbose=0)
    bundle.head.fit(features, labels(6), epochs=3, verbose=0)
    after = bundle.model.predict(x, verbose=0)["cc3"]
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, bundle.head.predict(features, verbose=0)["cc3"], rtol=1e-5, atol=1e-6)


def test_compile_errors():
    bundle = M.build_model(cfg(), CATEGORIES, TAGS)
    with pytest.raises(ValueError, match=r"n_tags=2 but 3 tag names"):
        M.compile_model(
            bundle.head, category_output="cc3", n_tags=2, tag_names=TAGS, learning_rate=1e-3, loss_weights={}
        )
    with pytest.raises(ValueError, match=r"loss_weights has keys \['color'\]"):
        M.compile_model(
            bundle.head,
            category_output="cc3",
            n_tags=3,
            tag_names=TAGS,
            learning_rate=1e-3,
            loss_weights={"color": 1.0},
        )
    with pytest.raises(ValueError, match=r"has outputs \['cc3', 'tags'\], expected \['category', 'tags'\]"):
        M.compile_model(
            bundle.head, category_output="category", n_tags=3, tag_names=TAGS, learning_rate=1e-3, loss_weights={}
        )


def test_augmenter_only_active_in_training():
    bundle = M.build_model(cfg(augment=True, dropout=0.0), CATEGORIES, TAGS)
    x = images(4)
    np.testing.assert_array_equal(np.asarray(bundle.augmenter(x)), x)
    np.testing.assert_array_equal(np.asarray(bundle.augmenter(x, training=False)), x)
    augmented = np.asarray(bundle.augmenter(x, training=True))
    assert augmented.shape == x.shape and np.abs(augmented - x).max() > 1.0
    # A plain call (what SavedModel's serve signature does) must not augment.
    np.testing.assert_allclose(np.asarray(bundle.model(x)["cc3"]), bundle.model.predict(x, verbose=0)["cc3"], atol=1e-6)
    assert M.build_model(cfg(augment=False), CATEGORIES, TAGS).augmenter is None


def test_label_smoothing_loss_and_tag_auc_values():
    loss = layers.SparseCategoricalCrossentropySmoothed(label_smoothing=0.2)
    y_pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    y_true = np.array([0, 2])
    target = np.full((2, 3), 0.2 / 3) + 0.8 * np.eye(3)[y_true]
    expected = np.mean(-(target * np.log(y_pred)).sum(axis=1))
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)

    auc = layers.TagAUC(column=1, name="auc_floral")
    y = np.array([[0, 1], [0, 0], [1, 1], [1, 0]], np.float32)
    p = np.array([[0.9, 0.8], [0.1, 0.3], [0.2, 0.7], [0.8, 0.4]], np.float32)
    auc.update_state(y, p)
    assert float(auc.result()) == pytest.approx(1.0, abs=1e-3)  # column 1 separates perfectly
    clone = layers.TagAUC.from_config(auc.get_config())
    assert clone.column == 1 and clone.name == "auc_floral"


def test_keras_save_load_round_trip_and_saved_model(tmp_path):
    bundle = M.build_model(cfg(pooling="avg_block4_5", augment=True), CATEGORIES, TAGS)
    compile_for(bundle.model, label_smoothing=0.1)
    x, y = images(4), labels(4)
    bundle.model.fit(x, y, epochs=1, verbose=0)
    expected = bundle.model.predict(x, verbose=0)

    path = tmp_path / "model.keras"
    bundle.model.save(path)
    loaded = M.load_model(path)
    got = loaded.predict(x, verbose=0)
    for name in ("cc3", "tags"):
        np.testing.assert_array_equal(got[name], expected[name])
    assert set(loaded.evaluate(x, y, verbose=0, return_dict=True)) == EXPECTED_METRICS

    export_dir = tmp_path / "saved_model"
    bundle.model.export(str(export_dir), verbose=False)
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"image"}
    served = serve(image=tf.constant(x))
    for name in ("cc3", "tags"):
        np.testing.assert_allclose(served[name].numpy(), expected[name], rtol=1e-5, atol=1e-6)


def test_overfits_one_batch():
    keras.utils.set_random_seed(0)
    bundle = M.build_model(cfg(backbone="vgg16", dense_units=32, dropout=0.0), CATEGORIES, TAGS)
    M.set_trainable(bundle, "finetune", ["block"])
    compile_for(bundle.model, lr=1e-4)
    x, y = images(8, seed=1), labels(8, seed=1)
    history = bundle.model.fit(x, y, epochs=40, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert set(history.history) == EXPECTED_METRICS
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    assert history.history["cc3_top1"][-1] == 1.0
