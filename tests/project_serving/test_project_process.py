"""``python -m vinted_classifier.serving`` as a process: round trip, access log, metrics, graceful SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from serve_helpers import (
    IMAGE_SIZE,
    PROJECT,
    V1_BIAS,
    b64,
    free_port,
    install_version,
    jpeg_bytes,
    subprocess_env,
    template,
)
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench.serve_load import wait_healthy

pytestmark = pytest.mark.slow


def test_real_server_roundtrip_access_log_and_graceful_sigterm(tmp_path):
    base = tmp_path / "my_model"
    install_version(template(V1_BIAS), base, 1)
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    stdout, stderr = open(tmp_path / "out.log", "wb"), open(tmp_path / "err.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vinted_classifier.serving",
            "--rest_api_port",
            str(port),
            "--port",
            str(grpc_port),
            "--model_base_path",
            str(base),
            "--file_system_poll_wait_seconds",
            "0.5",
            "--mixed_precision_rewrite=off",
            f"--monitoring_config_file={monitoring}",
            "--tensorflow_session_parallelism=2",
        ],
        stdout=stdout,
        stderr=stderr,
        cwd=PROJECT,
        env=subprocess_env(),
    )
    try:
        wait_healthy(url, 90, process)
        response = requests.post(f"{url}/v1/models/my_model:predict", json={"instances": [b64(jpeg_bytes())]})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert len(response.json()["predictions"][0]["cc3"]) == 4
        assert requests.get(f"{url}/v1/models/my_model").json()["model_version_status"][0]["state"] == "AVAILABLE"
        bad = requests.get(f"{url}/v1/models/my_model/versions/x")
        assert (bad.status_code, bad.json()) == (
            400,
            {"error": "Malformed request: GET /v1/models/my_model/versions/x"},
        )
        upload = requests.post(f"{url}/predict_image", files={"file": ("p.jpeg", jpeg_bytes(), "image/jpeg")})
        assert upload.status_code == 200 and upload.json()["version"] == "1"
        _grpc_predict_equals_rest(f"127.0.0.1:{grpc_port}", url)
        metrics = requests.get(f"{url}/monitoring/prometheus/metrics").text
        ok_count = '\n:tensorflow:serving:request_count{model_name="my_model",status="OK"} 5\n'
        assert ok_count in metrics, metrics[:2000]  # 2 predicts, status, upload over REST + 1 gRPC predict

        # A slow request (about 1,000 pixel images of JSON) is in flight when SIGTERM arrives.
        pixels = np.random.default_rng(0).random((1000, *IMAGE_SIZE, 3)).round(4).tolist()
        payload = json.dumps({"signature_name": "serving_pixels", "instances": pixels}).encode()
        result: dict = {}

        def slow_request():
            r = requests.post(f"{url}/v1/models/my_model:predict", data=payload, timeout=60)
            result["status"], result["n"] = r.status_code, len(r.json().get("predictions", []))

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        worker.join(60)
        assert result == {"status": 200, "n": 1000}  # finished, not cut off
        assert process.wait(30) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=2)  # no longer accepting
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout.close()
        stderr.close()
    log_lines = [json.loads(line) for line in (tmp_path / "out.log").read_text().splitlines() if line.strip()]
    predict_lines = [e for e in log_lines if e["path"] == "/v1/models/my_model:predict"]
    assert len(predict_lines) == 3
    first = predict_lines[0]
    assert set(first) >= {"method", "path", "status", "latency_ms", "bytes_in", "bytes_out", "model", "version"}
    assert (first["method"], first["status"], first["model"], first["version"]) == ("POST", 200, "my_model", 1)
    assert first["bytes_in"] > 0 and first["bytes_out"] > 0 and first["latency_ms"] > 0
    # No raw client IP in logs: a per-process keyed hash, the same for every request from one address.
    assert first["client"].startswith("client-") and "127.0.0.1" not in (tmp_path / "out.log").read_text()
    assert {e["client"] for e in predict_lines} == {first["client"]}
    assert any(e["status"] == 400 and e["path"] == "/v1/models/my_model/versions/x" for e in log_lines)
    errors = (tmp_path / "err.log").read_text()
    assert "Serving model my_model versions [1]" in errors
    assert "; mixed-precision rewrite off (switched off by request)" in errors
    assert errors.count("--tensorflow_session_parallelism=2 is a tensorflow_model_server flag") == 1
    assert f"Running gRPC ModelServer at 127.0.0.1:{grpc_port}" in errors
    assert "Server stopped" in errors


def _grpc_predict_equals_rest(target: str, url: str) -> None:

    image = jpeg_bytes((10, 120, 200), noise=5)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "my_model"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array([image], dtype=object)))
    with grpc.insecure_channel(target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    rest = requests.post(f"{url}/v1/models/my_model:predict", json={"inputs": [b64(image)]}).json()["outputs"]
    assert tf.make_ndarray(response.outputs["cc3"]).tolist() == np.float32(rest["cc3"]).tolist()
    assert tf.make_ndarray(response.outputs["top2_codes"]).tolist() == rest["top2_codes"]
