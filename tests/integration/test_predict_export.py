"""predictions.parquet format, and the versioned SavedModel: signatures, atomicity, skew."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from helpers import tiny_config, write_tiny_dataset
from starlette.testclient import TestClient

from tf_serving_compat.factory import build_app
from tf_serving_compat.options import ServerOptions
from vinted_classifier import data, export, pipeline, predict
from vinted_classifier.config import ModelConfig
from vinted_classifier.model import build_model
from vinted_classifier.runs import RunLabels, load_run, predict_probabilities
from vinted_classifier.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    dataset = write_tiny_dataset(root / "tiny", n_test=7)
    cfg = tiny_config(dataset, root / "runs")
    result = train(cfg)
    return cfg, result.run_dir


def test_predictions_match_the_homework_format(trained, tmp_path, reference_dir):
    cfg, run_dir = trained
    out = tmp_path / "predictions.parquet"
    frame = predict.predict_test_set(run_dir, out_path=out)
    example = pq.read_schema(reference_dir / "example_predictions.parquet")
    written = pq.read_schema(out)
    assert written.names == example.names
    assert [str(t) for t in written.types] == [str(t) for t in example.types]
    test_ids = pd.read_parquet(cfg.data.data_dir / "test.parquet")["uuid"].tolist()
    assert pd.read_parquet(out)["uuid"].tolist() == test_ids  # same values, same order, no suffix
    assert (frame["category1"] != frame["category2"]).all()
    assert frame[["category1", "category2"]].isin(range(3)).all().all()
    labels = RunLabels.load(run_dir / "labels.json")
    detailed = pd.read_parquet(tmp_path / "predictions_detailed.parquet")
    for tag, threshold in zip(labels.tags, labels.thresholds, strict=True):
        assert set(frame[tag].unique()) <= {0, 1}
        np.testing.assert_array_equal(frame[tag], (detailed[f"{tag}_probability"] >= threshold).astype(int))
    assert (detailed["category1_probability"] >= detailed["category2_probability"]).all()
    names = np.array(labels.categories)
    assert (detailed["category1_name"] == names[frame["category1"]]).all()


def test_missing_test_image_is_named_and_nothing_is_written(trained, tmp_path):
    cfg, run_dir = trained
    copy = write_tiny_dataset(tmp_path / "copy", n_test=4, seed=0)
    gone = pd.read_parquet(copy / "test.parquet")["uuid"].iloc[2]
    (copy / f"{gone}.jpeg").unlink()
    out = tmp_path / "predictions.parquet"
    with pytest.raises(data.ImageError, match=gone):
        predict.predict_test_set(run_dir, data_dir=copy, out_path=out)
    assert not out.exists()
    frame = predict.predict_test_set(run_dir, data_dir=copy, out_path=out, bad_images="skip")
    assert gone not in frame["uuid"].tolist() and len(frame) == 3
    assert json.loads((tmp_path / "predictions_skipped.json").read_text())["skipped_uuids"] == [gone]


def test_export_versions_are_numbered_and_atomic(trained, tmp_path, monkeypatch):
    _, run_dir = trained
    base = tmp_path / "sm"
    first = export.export_run(run_dir, base, "my_model")
    second = export.export_run(run_dir, base, "my_model")
    assert (first.name, second.name) == ("1", "2")
    assert json.loads((second / "assets" / "labels.json").read_text())["categories"] == [
        "BLOUSES",
        "CASUAL_DRESSES",
        "SHIRTS",
    ]

    def crash_mid_write(module, path):  # half a version, then the crash
        Path(path).mkdir(parents=True)
        (Path(path) / "saved_model.pb").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export.versioned, "save_serving_module", crash_mid_write)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_run(run_dir, base, "my_model")
    assert sorted(p.name for p in (base / "my_model").iterdir()) == ["1", "2"], "no half-written version left"


SKEW_SCRIPT = r"""
import base64, json, sys
import numpy as np, tensorflow as tf
path, files = sys.argv[1], json.loads(sys.argv[2])
loaded = tf.saved_model.load(path)
raw = tf.constant([open(f, "rb").read() for f in files])
out = loaded.signatures["serving_default"](image_bytes=raw)
# the seed's clients send decoded pixels / 255; decode with TF's JPEG decoder (PIL's IDCT differs slightly)
pixels = np.stack([tf.io.decode_image(open(f, "rb").read(), channels=3).numpy().astype(np.float32) / 255.0 for f in files])
out_px = loaded.signatures["serving_pixels"](input_image=tf.constant(pixels))
print(json.dumps({k: v.numpy().tolist() if v.dtype != tf.string else [[s.decode() for s in r] for r in v.numpy()]
                  for k, v in out.items()} | {"px_" + k: v.numpy().tolist() for k, v in out_px.items() if v.dtype != tf.string}
                 | {"dtypes": {k: v.dtype.name for k, v in out.items()}}))
"""  # noqa: E501


def test_skew_fresh_process_signatures_equal_in_memory_model(trained, tmp_path):
    cfg, run_dir = trained
    version = export.export_run(run_dir, tmp_path / "sm", "my_model")
    _, labels, model = load_run(run_dir)
    prepared = data.prepare(cfg.data, cfg.seed)
    files = prepared.paths("holdout")[:3] + prepared.paths("val")[:2]
    ds = pipeline.make_dataset(files, image_size=labels.image_size, batch_size=4)
    p_cat, p_tags = predict_probabilities(model, ds, "cc3")
    proc = subprocess.run(
        [sys.executable, "-c", SKEW_SCRIPT, str(version), json.dumps(files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["cc3"], p_cat, atol=1e-5)
    np.testing.assert_allclose(out["tags"], p_tags, atol=1e-5)
    np.testing.assert_allclose(out["px_cc3"], p_cat, atol=1e-4)
    np.testing.assert_allclose(out["px_tags"], p_tags, atol=1e-4)
    assert out["dtypes"] == {
        "cc3": "float32",
        "tags": "float32",
        "top2_codes": "int64",
        "top2_names": "string",
        "tag_flags": "int64",
    }
    codes = np.asarray(out["top2_codes"])
    np.testing.assert_array_equal(codes, predict.top2_codes(p_cat))
    assert out["top2_names"][0] == [labels.categories[c] for c in codes[0]]
    np.testing.assert_array_equal(out["tag_flags"], (p_tags >= np.asarray(labels.thresholds)).astype(int))


def test_saved_model_stores_each_variable_once(trained, tmp_path):
    _, run_dir = trained
    version = export.export_run(run_dir, tmp_path / "sm", "my_model")
    _, _, model = load_run(run_dir)
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    stored = {
        key: shape for key, shape in reader.get_variable_to_shape_map().items() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }
    assert not any(key.startswith("_all_variables/") for key in stored), sorted(stored)[:5]
    # The weights plus the random layers' 2-element seed states, nothing twice.
    assert sum(int(np.prod(shape)) for shape in stored.values()) == sum(int(np.prod(v.shape)) for v in model.variables)
    assert sum(int(np.prod(shape)) for shape in stored.values()) < model.count_params() + 100


def test_bad_image_bytes_raise_a_clear_error(trained, tmp_path):
    _, run_dir = trained
    version = export.export_run(run_dir, tmp_path / "sm", "my_model")
    loaded = tf.saved_model.load(str(version))
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)unknown image file format|image"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"definitely not a jpeg"]))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_exported_outputs_are_float32_under_every_policy(policy, tmp_path, reset_policy):
    keras.mixed_precision.set_global_policy(policy)
    model_cfg = ModelConfig(
        backbone="vgg16", weights="none", image_height=32, image_width=32, pooling="avg", dense_units=8, augment=False
    )
    bundle = build_model(model_cfg, ["A", "B", "C"], ["x", "y"])
    labels = RunLabels("cc3", ["A", "B", "C"], ["x", "y"], [0.5, 0.4], (32, 32))
    version = export.export_saved_model(bundle.model, labels, tmp_path, "m", model_cfg=model_cfg)
    # The default export computes in float32 whatever policy built the model.
    assert export.compute_op_dtypes(version) == {"Conv2D": {"float32"}, "MatMul": {"float32"}}
    loaded = tf.saved_model.load(str(version))
    for name in ("serving_default", "serving_pixels"):
        outputs = loaded.signatures[name].structured_outputs
        assert outputs["cc3"].dtype == tf.float32 and outputs["tags"].dtype == tf.float32, (policy, name)
        assert outputs["top2_codes"].dtype == tf.int64 and outputs["top2_names"].dtype == tf.string
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert list(inputs) == ["image_bytes"] and inputs["image_bytes"].dtype == tf.string


def test_served_exported_model_equals_in_memory_predictions(trained, tmp_path):
    """End to end: our export, served by our TF-Serving-compatible server, b64 JPEGs and float pixels."""
    cfg, run_dir = trained
    export.export_run(run_dir, tmp_path / "sm", "my_model")
    _, labels, model = load_run(run_dir)
    files = data.prepare(cfg.data, cfg.seed).paths("holdout")[:3]
    p_cat, p_tags = predict_probabilities(
        model, pipeline.make_dataset(files, image_size=labels.image_size, batch_size=4), "cc3"
    )
    app = build_app(ServerOptions(model_base_path=tmp_path / "sm" / "my_model", file_system_poll_wait_seconds=0))
    with TestClient(app.app) as client:
        body = {"instances": [{"b64": base64.b64encode(Path(f).read_bytes()).decode()} for f in files]}
        response = client.post("/v1/models/my_model:predict", json=body)
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
        np.testing.assert_allclose([row["cc3"] for row in served], p_cat, atol=1e-5)
        np.testing.assert_allclose([row["tags"] for row in served], p_tags, atol=1e-5)
        assert [row["top2_codes"] for row in served] == predict.top2_codes(p_cat).tolist()
        assert served[0]["top2_names"] == [labels.categories[c] for c in served[0]["top2_codes"]]
        pixels = [(tf.io.decode_image(Path(f).read_bytes(), channels=3).numpy() / 255.0).tolist() for f in files]
        response = client.post(
            "/v1/models/my_model:predict", json={"signature_name": "serving_pixels", "instances": pixels}
        )
        assert response.status_code == 200, response.text
        np.testing.assert_allclose([row["cc3"] for row in response.json()["predictions"]], p_cat, atol=1e-4)
        bad = client.post("/v1/models/my_model:predict", json={"instances": [{"b64": "bm90IGFuIGltYWdl"}]})
        assert bad.status_code == 400 and "error" in bad.json()
