"""No request can take the server down: memory bounded per request whatever its batch, admission
control, deep nesting, HTTP protocol errors — each answered with a JSON 4xx/503, never a 5xx or a crash.

The subprocess tests use a deliberately memory-hungry model (each image becomes a 512x512 float
tensor, 3 MiB): one unsplit call of 1,024 images would need more than 3 GiB, so a server that did
not split execution would fail the peak-RSS bound by an order of magnitude.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from serve_helpers import CATEGORIES, IMAGE_SIZE, b64, free_port, install_version, jpeg_bytes, write_warmup_file
from starlette.testclient import TestClient
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tf_serving_compat.errors import ServingError
from tf_serving_compat.execution import Admission, ExecutionLimits, measure_memory_per_item, run_in_pieces
from tf_serving_compat.factory import build_app
from tf_serving_compat.grpc_service import start_grpc_server
from tf_serving_compat.options import ServerOptions
from tf_serving_compat.versions import LoadedVersion

PROJECT = Path(__file__).resolve().parents[2]
HUNGRY_SIDE = 512  # pixels per side of the per-image float tensor: 3 MiB per image
BUDGET_MIB = 64
# Peak RSS a 1,024-image request may add: one execution budget plus the request's own bytes
# (body, parsed inputs, outputs, response JSON) with margin. Unsplit, it would be > 3 GiB.
PEAK_GROWTH_BOUND_MIB = 256
N_IMAGES = 1024


# ---------------------------------------------------------------- execution units (pure)


def test_run_in_pieces_runs_at_most_piece_items_and_keeps_order():
    calls: list[int] = []

    def run(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2, "z": inputs["x"][:, :1]}

    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    out = run_in_pieces(run, {"x": x}, 5)
    assert calls == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(out["y"], x * 2)
    np.testing.assert_array_equal(out["z"], x[:, :1])
    calls.clear()
    run_in_pieces(run, {"x": x}, 23)
    assert calls == [23]


def test_run_in_pieces_refuses_outputs_that_are_not_per_item():

    with pytest.raises(ServingError, match="does not have the batch size of its input piece"):
        run_in_pieces(lambda inputs: {"total": np.array([inputs["x"].sum()])}, {"x": np.ones((6, 1))}, 4)


@pytest.mark.parametrize(
    "explicit, per_item, measured_items, expected",
    [
        (8, 1e9, 32, 8),  # an explicit size wins over the measurement
        (None, 3 * 2**20, 32, 21),  # 64 MiB / 3 MiB
        (None, 1 * 2**20, 32, 32),  # never above the batch the memory was measured with
        (None, 1 * 2**20, None, 64),
        (None, 200 * 2**20, 32, 1),  # never below one image
        (None, 0.0, None, 1024),  # below what RSS resolves: only the request cap binds
        (None, None, None, 16),  # nothing measured: the documented fallback
    ],
)
def test_execution_batch_size_is_the_budget_over_the_measured_memory(explicit, per_item, measured_items, expected):
    limits = ExecutionLimits(explicit, BUDGET_MIB * 2**20, ceiling=1024)
    assert limits.batch_size(per_item, measured_items) == expected


def test_memory_per_item_is_measured_from_peak_rss():
    item_bytes = 8 * 2**20

    def run(inputs):
        block = np.ones((len(inputs["x"]), item_bytes // 8))  # touched, so resident
        return {"y": block[:, :1].copy()}

    measured = measure_memory_per_item(run, {"x": np.zeros((16, 1))})
    assert measured is not None
    assert 0.9 * item_bytes <= measured <= 1.5 * item_bytes


def test_admission_counts_items_in_flight_and_refuses_beyond_the_limit():

    admission = Admission(10)
    admission.acquire(8)
    with pytest.raises(ServingError, match="Server at capacity: 8 images in flight, this request adds 3") as caught:
        admission.acquire(3)
    assert caught.value.code == "UNAVAILABLE"
    admission.acquire(2)
    admission.release(8)
    admission.acquire(3)
    assert admission.in_flight == 5


def test_in_flight_limit_below_the_request_limit_is_refused_at_start():

    with pytest.raises(ValueError, match="max_inflight_images \\(100\\) must be at least max_instances \\(1024\\)"):
        ServerOptions(max_inflight_images=100)


# ---------------------------------------------------------------- admission over REST and gRPC (in process)


def test_request_beyond_the_admission_bound_is_503_and_the_next_one_is_served(model_base, monkeypatch):

    entered, release = threading.Event(), threading.Event()
    real_run = LoadedVersion.run

    def gated_run(self, signature_name, inputs):
        if len(next(iter(inputs.values()))) == 8:  # the request that holds the capacity
            entered.set()
            release.wait(20)
        return real_run(self, signature_name, inputs)

    monkeypatch.setattr(LoadedVersion, "run", gated_run)
    app = build_app(
        ServerOptions(
            model_base_path=model_base,
            file_system_poll_wait_seconds=0,
            max_instances=8,
            max_inflight_images=10,
            max_execution_batch_size=8,
        )
    )
    server = start_grpc_server(app, "127.0.0.1", free_port())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    images = [b64(jpeg_bytes(size=(32, 32), noise=30, seed=i)) for i in range(8)]
    try:
        with TestClient(app.app) as client:
            holder: dict = {}
            thread = threading.Thread(
                target=lambda: holder.update(
                    response=client.post("/v1/models/my_model:predict", json={"instances": images})
                )
            )
            thread.start()
            assert entered.wait(20)
            refused = client.post("/v1/models/my_model:predict", json={"instances": images[:3]})
            assert refused.status_code == 503
            assert refused.json() == {
                "error": "Server at capacity: 8 images in flight, this request adds 3 and the limit is 10; retry later"
            }
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "my_model"
            request.inputs["image_bytes"].CopyFrom(_string_tensor([jpeg_bytes()] * 3))
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=20)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Server at capacity" in caught.value.details()
            release.set()
            thread.join(20)
            assert holder["response"].status_code == 200 and len(holder["response"].json()["predictions"]) == 8
            assert app.admission.in_flight == 0
            assert client.post("/v1/models/my_model:predict", json={"instances": images[:3]}).status_code == 200

            assert tf.make_ndarray(stub.Predict(request, timeout=20).outputs["cc3"]).shape == (3, 4)
    finally:
        release.set()
        channel.close()
        server.stop(0).wait(10)
        app.close()


def _string_tensor(values: list[bytes]):

    return tf.make_tensor_proto(np.array(values, dtype=object))


# ---------------------------------------------------------------- hostile JSON


@pytest.mark.parametrize("depth", [65, 255, 10_000])
@pytest.mark.parametrize("signature", ["serving_default", "serving_pixels"])
@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_deep_nesting_is_a_json_400_on_every_signature(client, depth, signature, key):
    body = f'{{"signature_name": "{signature}", "{key}": {"[" * depth}1.0{"]" * depth}}}'
    response = client.post("/v1/models/my_model:predict", content=body)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    if depth == 10_000:
        assert error == "JSON Parse error: document nested too deeply"
    else:
        assert "exceeds the maximum tensor rank" in error
        assert ("of 'instances' list" in error) if key == "instances" else ("for input " in error)


@pytest.mark.parametrize(
    "http_version, headers, status",
    [
        ("1.1", [], 400),
        ("1.1", [(b"host", b"localhost")], 200),
        ("1.0", [], 200),  # HTTP/1.0 has no such rule
    ],
)
def test_missing_host_on_http_1_1_is_a_json_400(serving, http_version, headers, status):

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": "GET",
        "scheme": "http",
        "path": "/v1/models/my_model",
        "raw_path": b"/v1/models/my_model",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 9000),
    }
    sent: dict = {"body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        else:
            sent["body"] += message.get("body", b"")

    asyncio.run(serving.app(scope, receive, send))
    assert sent["status"] == status
    if status == 400:
        assert json.loads(sent["body"]) == {
            "error": "Missing Host header: HTTP/1.1 requests must send one (RFC 9112, section 3.2)"
        }


# ---------------------------------------------------------------- a real server process, 1,024 images


def _build_hungry_model(path: Path) -> Path:
    """serving_default(image_bytes) and serving_pixels(input_image), 3 MiB of activations per image."""

    class Hungry(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(3, len(CATEGORIES))).astype(np.float32) * 4)

        def _head(self, big):
            mean = tf.reduce_mean(big, axis=[1, 2])
            return {"cc3": tf.nn.softmax(tf.matmul(mean, self.w)), "mean": mean}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            def decode(data):
                image = tf.image.convert_image_dtype(tf.io.decode_jpeg(data, channels=3), tf.float32)
                return tf.image.resize(image, [HUNGRY_SIDE, HUNGRY_SIDE])

            big = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([HUNGRY_SIDE, HUNGRY_SIDE, 3]))
            return self._head(big)

        @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SIZE, 3], tf.float32, name="input_image")])
        def serve_pixels(self, input_image):
            return self._head(tf.image.resize(input_image, [HUNGRY_SIDE, HUNGRY_SIDE]))

    module = Hungry()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve_bytes.get_concrete_function(),
            "serving_pixels": module.serve_pixels.get_concrete_function(),
        },
    )
    synthetic = np.array([jpeg_bytes(size=(32, 32), noise=20, seed=1000 + i) for i in range(32)], dtype=object)
    write_warmup_file(
        path, [("serving_default", {"image_bytes": synthetic[:1]}), ("serving_default", {"image_bytes": synthetic})]
    )
    return path


@pytest.fixture(scope="module")
def hungry_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hungry")
    install_version(_build_hungry_model(root / "template"), root / "my_model", 1)
    return root / "my_model"


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _raw_http(port: int, raw: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.slow
@pytest.mark.parametrize("batching", [False, True])
def test_1024_images_in_one_request_are_answered_with_bounded_peak_memory(hungry_base, tmp_path, batching):

    rest_port, grpc_port = free_port(), free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(PROJECT))
    log_path = tmp_path / "server.log"
    flags = [
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_base_path={hungry_base}",
        "--file_system_poll_wait_seconds=0",
        f"--execution_memory_mb={BUDGET_MIB}",
        f"--enable_batching={str(batching).lower()}",
    ]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tf_serving_compat.server", *flags], cwd=PROJECT, env=env, stdout=log, stderr=log
        )
    images = [jpeg_bytes(size=(32, 32), noise=40, seed=i) for i in range(N_IMAGES)]
    try:
        _wait_until_serving(server, rest_port, log_path)
        logged = log_path.read_text()
        per_call = int(logged.split("at most ")[1].split(" images per model call")[0])
        assert 1 <= per_call <= 32, logged[-2000:]  # ~3 MiB per image measured: about 21 fit in 64 MiB
        peak_before = _peak_rss_mib(server.pid)

        response = requests.post(
            f"http://127.0.0.1:{rest_port}/v1/models/my_model:predict",
            json={"instances": [b64(i) for i in images]},
            timeout=300,
        )
        assert response.status_code == 200, response.text[:500]
        rest_rows = response.json()["predictions"]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "my_model"
        request.inputs["image_bytes"].CopyFrom(_string_tensor(images))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=300)
        grpc_means = tf.make_ndarray(reply.outputs["mean"])
        growth = _peak_rss_mib(server.pid) - peak_before
        print(f"batching={batching}: {per_call} images per call, peak RSS growth {growth:.1f} MiB")
        assert growth < PEAK_GROWTH_BOUND_MIB, logged[-2000:]

        assert len(rest_rows) == N_IMAGES and grpc_means.shape == (N_IMAGES, 3)
        one_by_one = _score_one_by_one(hungry_base / "1", images)
        np.testing.assert_allclose([row["mean"] for row in rest_rows], one_by_one, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grpc_means, one_by_one, rtol=1e-5, atol=1e-6)

        # Protocol errors the HTTP parser itself answers: JSON bodies, 400.
        assert _raw_http(rest_port, b"GET /v1/models/my_model HTTP/1.1\r\n\r\n") == (
            400,
            {"error": "Missing Host header: HTTP/1.1 requests must send one (RFC 9112, section 3.2)"},
        )
        status, body = _raw_http(rest_port, b"FOO /v1/models/my_model HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400 and body["error"].startswith("Malformed HTTP request")
        status, body = _raw_http(rest_port, b"NOT A REQUEST LINE\r\n\r\n")
        assert status == 400 and body["error"].startswith("Malformed HTTP request")
        assert server.poll() is None
        assert requests.get(f"http://127.0.0.1:{rest_port}/v1/models/my_model", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(30)


def _wait_until_serving(server: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models/my_model", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.3)


def _score_one_by_one(version_dir: Path, images: list[bytes]) -> np.ndarray:

    function = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return np.concatenate([function(image_bytes=tf.constant([image]))["mean"].numpy() for image in images])
