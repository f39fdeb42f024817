"""The project's model metrics on the served app: names, types, labels, exact counts, drift, age, sampling."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serve_helpers import (
    CATEGORIES,
    TAGS,
    V1_BIAS,
    b64,
    free_port,
    install_version,
    jpeg_bytes,
    png_header_only,
    reference_outputs,
    template,
)
from starlette.testclient import TestClient
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tf_serving_compat.factory import build_app
from tf_serving_compat.grpc_service import start_grpc_server
from tf_serving_compat.options import ServerOptions
from vinted_classifier.config import MonitoringConfig
from vinted_classifier.monitoring.drift import Observation
from vinted_classifier.monitoring.metrics import ModelWatcher, load_version_metadata
from vinted_classifier.monitoring.reference import build_reference, write_reference
from vinted_classifier.serving import VintedAdapter

METRICS = "/monitoring/prometheus/metrics"
NOW = 1_800_000_000.0
EXPORTED = _dt.datetime.fromtimestamp(NOW - 3 * 86400, _dt.UTC)


def sample(text: str, name: str, **labels) -> float:
    total, found_any = 0.0, False
    for line in text.splitlines():
        match = re.fullmatch(r"(\S+?)(?:\{(.*)\})? (\S+)", line)
        if not match or line.startswith("#") or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == str(v) for k, v in labels.items()):
            total += float(match.group(3))
            found_any = True
    return total if found_any else 0.0


def metric_type(text: str, name: str) -> str | None:
    match = re.search(rf"^# TYPE {re.escape(name)} (\w+)$", text, re.MULTILINE)
    return match.group(1) if match else None


def install_watched_version(base, reference_rows):
    version = install_version(template(V1_BIAS), base, 1)
    (version / "assets" / "export.json").write_text(json.dumps({"exported_utc": EXPORTED.isoformat()}))
    reference = build_reference(reference_rows, CATEGORIES, TAGS, {"test": True})
    write_reference(reference, version / "assets.extra" / "reference_stats.json")
    return version


@pytest.fixture
def watched(tmp_path):

    def start(reference_rows, **settings):
        base = tmp_path / "my_model"
        version = install_watched_version(base, reference_rows)
        monitoring = tmp_path / "monitoring.config"
        monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}')
        watcher = ModelWatcher(MonitoringConfig(**settings), clock=lambda: NOW, sample_seed=0)
        options = ServerOptions(
            model_base_path=base, file_system_poll_wait_seconds=0, monitoring_config_file=monitoring
        )
        app = build_app(options, adapter=VintedAdapter(watcher=watcher))
        started.append((app, watcher))
        return app, watcher, version

    started = []
    yield start
    for app, watcher in started:
        watcher.close()
        app.close()


def _reference_rows(category: int, brightness: float, n: int = 20):
    return [Observation(category, 0.9, (False, False, False), 16.0, 12.0, 16 / 12, brightness)] * n


def test_metrics_count_what_was_sent_with_names_types_and_labels(watched):

    image = jpeg_bytes(colour=(200, 30, 30), size=(16, 12))
    app, watcher, version = watched(_reference_rows(0, 90.0))
    expected = int(
        np.argmax(reference_outputs(version, "serving_default", image_bytes=np.array([image], dtype=object))["cc3"][0])
    )
    pixels = np.full((2, 12, 10, 3), 0.25, np.float32)
    nan_pixels = pixels.copy()
    nan_pixels[1, 0, 0, 0] = np.nan
    server = start_grpc_server(app, "127.0.0.1", free_port())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    try:
        with TestClient(app.app) as c:
            rest_images, batch_rows = 3, 2
            for _ in range(rest_images):
                assert c.post("/v1/models/my_model:predict", json={"instances": [b64(image)]}).status_code == 200
            assert (
                c.post("/v1/models/my_model:predict", json={"instances": [b64(image)] * batch_rows}).status_code == 200
            )
            assert c.post("/predict_image", files={"file": ("a.jpeg", image, "image/jpeg")}).status_code == 200
            assert (
                c.post(
                    "/v1/models/my_model:predict",
                    json={"signature_name": "serving_pixels", "instances": pixels.tolist()},
                ).status_code
                == 200
            )
            body = json.dumps({"signature_name": "serving_pixels", "instances": nan_pixels.tolist()})  # NaN literal
            assert (
                c.post(
                    "/v1/models/my_model:predict", content=body, headers={"content-type": "application/json"}
                ).status_code
                == 200
            )
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "my_model"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array([image], dtype=object)))
            stub.Predict(request, timeout=30)
            # refusals: an image bomb, undecodable bytes, an empty request, an unknown model (not a label value)
            assert (
                c.post(
                    "/v1/models/my_model:predict", json={"instances": [b64(png_header_only(20000, 20000))]}
                ).status_code
                == 400
            )
            assert c.post("/v1/models/my_model:predict", json={"instances": [b64(b"no image")]}).status_code == 400
            assert c.post("/v1/models/my_model:predict", json={"instances": []}).status_code == 400
            assert c.post("/v1/models/other:predict", json={"instances": [b64(image)]}).status_code == 404
            watcher.flush()
            text = c.get(METRICS).text
    finally:
        channel.close()
        server.stop(0).wait(10)
    v = {"model": "my_model", "version": "1"}
    jpeg_rows = rest_images + batch_rows + 1 + 1  # REST, REST batch, /predict_image, gRPC
    pixel_rows, nan_rows = 2 + 2, 1
    finite_rows = jpeg_rows + pixel_rows - nan_rows
    for name, kind in [
        ("vinted_predictions_total", "counter"),
        ("vinted_tag_predicted_total", "counter"),
        ("vinted_top1_confidence", "histogram"),
        ("vinted_input_image_width", "histogram"),
        ("vinted_input_image_brightness", "histogram"),
        ("vinted_nonfinite_outputs_total", "counter"),
        ("vinted_rejected_requests_total", "counter"),
        ("vinted_model_age_seconds", "gauge"),
        ("vinted_drift_linf", "gauge"),
        ("vinted_drift_js", "gauge"),
        ("vinted_drift_window_samples", "gauge"),
    ]:
        assert metric_type(text, name) == kind, name
    assert sample(text, "vinted_predictions_total", **v) == finite_rows
    assert sample(text, "vinted_predictions_total", **v, category=CATEGORIES[expected]) >= jpeg_rows
    assert sample(text, "vinted_top1_confidence_count", **v) == finite_rows
    assert sample(text, "vinted_nonfinite_outputs_total", **v, signature="serving_pixels") == nan_rows
    assert sample(text, "vinted_nonfinite_outputs_total", **v, signature="serving_default") == 0
    measured_pixels = pixel_rows - nan_rows  # a NaN image has no brightness: no statistics for that row
    assert sample(text, "vinted_input_image_width_count", **v) == jpeg_rows + measured_pixels
    assert sample(text, "vinted_input_image_width_sum", **v) == 16 * jpeg_rows + 10 * measured_pixels
    assert sample(text, "vinted_input_image_height_sum", **v) == 12 * (jpeg_rows + measured_pixels)
    assert sample(text, "vinted_rejected_requests_total", model="my_model", reason="image_too_large") == 1
    assert sample(text, "vinted_rejected_requests_total", model="my_model", reason="undecodable_image") == 1
    assert sample(text, "vinted_rejected_requests_total", model="my_model", reason="invalid_argument") == 1
    assert sample(text, "vinted_rejected_requests_total", model="unknown", reason="not_found") == 1
    assert sample(text, "vinted_model_age_seconds", **v) == 3 * 86400
    assert sample(text, "vinted_reference_loaded", **v) == 1
    assert sample(text, "vinted_drift_window_samples", **v) == finite_rows
    assert ":tensorflow:serving:request_count" in text  # TF Serving's own metrics are still there, untouched


def test_drift_gauges_near_zero_on_the_reference_and_high_on_darker_or_one_class(watched):
    bright, dark = jpeg_bytes(colour=(180, 180, 180), size=(16, 12)), jpeg_bytes(colour=(60, 60, 60), size=(16, 12))
    app, watcher, version = watched(_reference_rows(0, 0.0), window_size=4)  # placeholder, replaced below
    # The reference: exactly what the server will see for `bright` (same code path, same image).
    with TestClient(app.app) as c:
        assert c.post("/v1/models/my_model:predict", json={"instances": [b64(bright)] * 4}).status_code == 200
        watcher.flush()
        rows = watcher.drift_by_version()[("my_model", 1)][1].window.snapshot(NOW)
        write_reference(
            build_reference(rows, CATEGORIES, TAGS, {"test": True}), version / "assets.extra" / "reference_stats.json"
        )
        # Re-read the reference: the adapter loads it with the version, the watcher caches it per version.
        loaded = app.registry.get("my_model").resolve(1)
        loaded.metadata = load_version_metadata("my_model", 1, loaded.path)
        watcher._versions.clear()
        assert c.post("/v1/models/my_model:predict", json={"instances": [b64(bright)] * 4}).status_code == 200
        watcher.flush()
        same = c.get(METRICS).text
        assert c.post("/v1/models/my_model:predict", json={"instances": [b64(dark)] * 4}).status_code == 200
        watcher.flush()
        darker = c.get(METRICS).text
    v = {"model": "my_model", "version": "1"}
    assert sample(same, "vinted_drift_js", **v, feature="brightness") == 0.0
    assert sample(same, "vinted_drift_linf", **v, feature="category") == 0.0
    assert sample(same, "vinted_drift_window_samples", **v) == 4
    limits = MonitoringConfig()
    assert sample(darker, "vinted_drift_js", **v, feature="brightness") > limits.js_threshold  # window: 4 dark rows
    assert sample(darker, "vinted_drift_js", **v, feature="width") == 0.0


def test_request_sampling_writes_hashes_sizes_and_predictions_never_images(watched, tmp_path):

    image = jpeg_bytes(size=(16, 12))
    app, watcher, _ = watched(
        _reference_rows(0, 90.0), sample_fraction=1.0, sample_file=str(tmp_path / "samples" / "requests.jsonl")
    )
    with TestClient(app.app) as c:
        assert c.post("/v1/models/my_model:predict", json={"instances": [b64(image)] * 2}).status_code == 200
        watcher.flush()
    watcher.close()
    lines = (tmp_path / "samples" / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 2
    row = json.loads(lines[0])
    assert row["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert (row["width"], row["height"], row["model"], row["version"]) == (16.0, 12.0, "my_model", "1")
    assert row["category"] in CATEGORIES and 0 < row["confidence"] <= 1
    assert set(row) == {
        "time_utc",
        "model",
        "version",
        "image_sha256",
        "width",
        "height",
        "category",
        "confidence",
        "tags",
    }


def test_without_metrics_the_watcher_stays_off(model_base):
    app = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0), adapter=VintedAdapter())
    try:
        watcher = app.observers[0]
        assert isinstance(watcher, ModelWatcher) and watcher.enabled is False
        with TestClient(app.app) as c:
            assert c.post("/predict_image", content=jpeg_bytes()).status_code == 200
        assert watcher._thread is None
    finally:
        app.close()
