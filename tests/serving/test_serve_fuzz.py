"""Fuzz (Hypothesis): >= 2,000 hostile REST requests driven through the ASGI app in-process and
>= 500 hostile gRPC requests; no answer is a server fault (HTTP >= 500, gRPC INTERNAL/UNKNOWN/...),
and a valid predict works afterwards.

REST requests go straight to the ASGI callable (no sockets): arbitrary methods, raw paths and
headers (bad Content-Length, odd content types), bodies that are valid requests with random byte
mutations, the issue's known-bad classes (thousand-digit versions and JSON integers, full-width
digits, lone surrogates, extra columnar inputs, deep nesting) and clients that disconnect mid-body.
"""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import IMAGE_SIZE, V1_BIAS, b64, free_port, install_version, jpeg_bytes, template
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tf_serving_compat.factory import build_app
from tf_serving_compat.grpc_service import start_grpc_server
from tf_serving_compat.options import ServerOptions

N_REST, N_GRPC = 2000, 500
REST_SENT: list[int | None] = []
GRPC_SENT: list[grpc.StatusCode] = []
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
FUZZ_SETTINGS = dict(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

JPEG = b64(jpeg_bytes())
PIXELS = np.full((1, *IMAGE_SIZE, 3), 0.25).tolist()
VALID_BODIES = [
    json.dumps({"instances": [JPEG]}).encode(),
    json.dumps({"inputs": {"image_bytes": [JPEG]}}).encode(),
    json.dumps({"signature_name": "serving_pixels", "instances": PIXELS}).encode(),
    json.dumps({"examples": [{"x": [1.0]}]}).encode(),
]
KNOWN_BAD_BODIES = [
    b'{"instances": [' + b"9" * 5000 + b"]}",
    b'{"signature_name": "serving_pixels", "instances": [[[[' + b"1" * 4500 + b"]]]]}",
    b'{"instances": [{"b64": "\\ud800"}]}',
    b'{"instances": ["\\ud800"]}',
    b'{"signature_name": "\\udfff", "instances": [1]}',
    b'{"inputs": {"image_bytes": [' + json.dumps(JPEG).encode() + b'], "surplus": [1]}}',
    b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"inputs": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"instances": [1e999999]}',
    b'{"signature_name": "serving_pixels", "instances": ['
    + json.dumps([[[-1e308] * 3] * IMAGE_SIZE[1]] * IMAGE_SIZE[0]).encode()
    + b"]}",
    b"\xef\xbb\xbf{}",
    b"\x00" * 64,
]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
b64_value = (
    st.text(alphabet="ABCxyz019+/=-_$ \n", max_size=12).map(lambda s: {"b64": s})
    | st.binary(max_size=24).map(lambda b: {"b64": base64.b64encode(b).decode()})
    | st.just(JPEG)
    | st.just({"b64": JPEG["b64"], "extra": 1})
)
instance = (
    json_value
    | b64_value
    | st.dictionaries(st.sampled_from(["image_bytes", "input_image", "x"]), json_value | b64_value, max_size=2)
)
document = st.fixed_dictionaries(
    {},
    optional={
        "signature_name": st.sampled_from(["serving_default", "serving_pixels", "", "nope"]) | json_leaf,
        "instances": st.lists(instance, max_size=3) | json_value,
        "inputs": instance | st.lists(instance, max_size=2),
        "examples": st.lists(json_value, max_size=2) | json_value,
    },
)


def mutate(data: bytes, edits: list[tuple[int, bytes, str]]) -> bytes:
    """Random byte-level damage to a valid request."""
    for position, chunk, kind in edits:
        at = position % (len(data) + 1)
        if kind == "replace":
            data = data[:at] + chunk + data[at + len(chunk) :]
        elif kind == "insert":
            data = data[:at] + chunk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 + len(chunk) :]
        else:
            data = data[:at]
    return data


mutated = st.builds(
    mutate,
    st.sampled_from(VALID_BODIES),
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=4),
            st.sampled_from(["replace", "insert", "delete", "truncate"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
body = (
    st.sampled_from(VALID_BODIES)
    | mutated
    | mutated
    | st.sampled_from(KNOWN_BAD_BODIES)
    | document.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=48)
    | st.just(b"")
)

digits = (
    st.integers(0, 2**64).map(str)
    | st.just("9" * 5000)
    | st.just("１１")
    | st.just("١")
    | st.just("-1")
    | st.just("01")
    | st.just("1e3")
    | st.just(" 1")
    | st.text(alphabet="0123456789٣๓１", min_size=1, max_size=6)
)
model_paths = st.builds(
    lambda v, verb: f"/v1/models/my_model/versions/{v}{verb}",
    digits,
    st.sampled_from([":predict", ":classify", ":regress", "", "/metadata"]),
)
extra_paths = st.builds(
    lambda name, v: f"/models/{name}/predict_image?version={v}", st.sampled_from(["my_model", "nope"]), digits
)
known_paths = st.sampled_from(
    [
        "/v1/models/my_model:predict",
        "/v1/models/my_model:classify",
        "/v1/models/my_model:regress",
        "/v1/models/my_model",
        "/v1/models/my_model/metadata",
        "/v1/models/my_model/labels/stable:predict",
        "/v1/models",
        "/v1/models/other:predict",
        "/v1/models/my_model/versions/1/labels/a:predict",
        "/v1/",
        "/v1",
        "/healthz",
        "/",
        "/V1/MODELS/my_model:PREDICT",
        "/monitoring/prometheus/metrics",
    ]
)
random_path = st.text(max_size=40).map(lambda s: "/" + s.lstrip("/"))
path = known_paths | model_paths | extra_paths | random_path
method = st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"])
content_type = st.sampled_from(
    [
        b"application/json",
        b"text/plain",
        b"multipart/form-data; boundary=xyz",
        b"multipart/form-data",
        b"image/jpeg",
        b"application/octet-stream",
        b"\xff\xfe",
    ]
)
content_length = st.sampled_from([None, "exact", "-1", "abc", "99999999999999999999", "0", "1 2", "+5"])


def start_fuzz_stack(root, adapter=None):
    """The app (metrics on, small body limit) with ``adapter`` plugged in, and its gRPC server."""

    base = root / "my_model"
    install_version(template(V1_BIAS), base, 1)
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    options = ServerOptions(
        model_base_path=base,
        file_system_poll_wait_seconds=0,
        max_body_bytes=64 * 1024,
        monitoring_config_file=monitoring,
    )
    app = build_app(options, adapter=adapter)
    server = start_grpc_server(app, "127.0.0.1", free_port())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    loop = asyncio.new_event_loop()
    try:
        yield {
            "app": app,
            "loop": loop,
            "channel": channel,
            "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel),
        }
    finally:
        loop.close()
        channel.close()
        server.stop(0).wait(10)
        app.close()


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    """The generic server (metrics on) and its gRPC server; tests/project_serving fuzzes the project's."""
    yield from start_fuzz_stack(tmp_path_factory.mktemp("fuzz"))


async def _asgi_call(
    app, method: str, raw_path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], disconnect: bool
) -> tuple[int | None, dict, bytes]:
    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 9000),
    }
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect:
        messages = messages[:-1] + [{"type": "http.disconnect"}]
    sent: dict = {"status": None, "headers": {}, "body": b""}

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return sent["status"], sent["headers"], sent["body"]


@settings(max_examples=N_REST, **FUZZ_SETTINGS)
@given(
    method=method,
    path=path,
    body=body,
    content_type=content_type,
    length=content_length,
    splits=st.integers(1, 3),
    disconnect=st.sampled_from([False] * 9 + [True]),
)
def test_hostile_rest_requests_never_5xx(fuzz_stack, method, path, body, content_type, length, splits, disconnect):
    headers = [(b"host", b"127.0.0.1:9000"), (b"content-type", content_type)]  # HTTP/1.1 requires Host
    if length == "exact":
        headers.append((b"content-length", str(len(body)).encode()))
    elif length is not None:
        headers.append((b"content-length", length.encode()))
    step = max(1, len(body) // splits)
    chunks = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    app = fuzz_stack["app"].app
    status, response_headers, payload = fuzz_stack["loop"].run_until_complete(
        _asgi_call(app, method, path, headers, chunks, disconnect and len(chunks) > 1)
    )
    REST_SENT.append(status)
    if status is None:  # only a client that went away gets no answer
        assert disconnect
        return
    assert status < 500, (method, path, body[:300], payload[:300])
    if path.startswith("/monitoring/"):
        return
    assert response_headers["content-type"].startswith("application/json")
    if status >= 400 and method != "HEAD":
        error = json.loads(payload)
        assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]


# ---------------------------------------------------------------- gRPC

DTYPE_ENUMS = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 14, 19, 23, 99, 101, -3])
tensor_shapes = st.lists(st.sampled_from([-5, -1, 0, 1, 2, 3, IMAGE_SIZE[0], IMAGE_SIZE[1], 10**6, 2**40]), max_size=5)


@st.composite
def tensor_protos(draw):

    proto = tensor_pb2.TensorProto()
    proto.dtype = draw(DTYPE_ENUMS) % 2**31
    for size in draw(tensor_shapes):
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    choice = draw(st.sampled_from(["content", "floats", "strings", "ints", "jpeg", "none"]))
    if choice == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif choice == "floats":
        proto.float_val.extend(draw(st.lists(st.floats(width=32, allow_nan=True), max_size=8)))
    elif choice == "strings":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=16), max_size=4)))
    elif choice == "ints":
        proto.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)))
    elif choice == "jpeg":
        proto.string_val.append(jpeg_bytes())
    return proto


def model_specs():

    @st.composite
    def build(draw):
        spec = model_pb2.ModelSpec()
        spec.name = draw(st.sampled_from(["my_model", "my_model", "nope", ""]) | st.text(max_size=8))
        which = draw(st.sampled_from(["none", "version", "label"]))
        if which == "version":
            spec.version.value = draw(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, 2]))
        elif which == "label":
            spec.version_label = draw(st.text(max_size=6))
        spec.signature_name = draw(
            st.sampled_from(["", "serving_default", "serving_pixels", "nope", "__saved_model_init_op"])
            | st.text(max_size=6)
        )
        return spec

    return build()


@st.composite
def grpc_calls(draw):
    """(method path, serialized request bytes)."""

    kind = draw(st.sampled_from(["predict"] * 6 + ["metadata", "status", "classify", "multi", "raw"]))
    if kind == "predict":
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(draw(model_specs()))
        for alias in draw(st.lists(st.sampled_from(["image_bytes", "input_image", "x", ""]), max_size=3, unique=True)):
            request.inputs[alias].CopyFrom(draw(tensor_protos()))
        request.output_filter.extend(draw(st.lists(st.sampled_from(["cc3", "tags", "nope"]), max_size=2)))
        return "/tensorflow.serving.PredictionService/Predict", request.SerializeToString()
    if kind == "metadata":
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.CopyFrom(draw(model_specs()))
        request.metadata_field.extend(draw(st.lists(st.sampled_from(["signature_def", "x", ""]), max_size=2)))
        return "/tensorflow.serving.PredictionService/GetModelMetadata", request.SerializeToString()
    if kind == "status":
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(draw(model_specs()))
        return "/tensorflow.serving.ModelService/GetModelStatus", request.SerializeToString()
    if kind == "classify":
        request = classification_pb2.ClassificationRequest()
        request.model_spec.CopyFrom(draw(model_specs()))
        return draw(
            st.sampled_from(
                ["/tensorflow.serving.PredictionService/Classify", "/tensorflow.serving.PredictionService/Regress"]
            )
        ), request.SerializeToString()
    if kind == "multi":
        request = inference_pb2.MultiInferenceRequest()
        for _ in range(draw(st.integers(0, 3))):
            task = request.tasks.add()
            task.model_spec.CopyFrom(draw(model_specs()))
            task.method_name = draw(st.sampled_from(["tensorflow/serving/classify", "tensorflow/serving/predict", ""]))
        return "/tensorflow.serving.PredictionService/MultiInference", request.SerializeToString()
    valid = predict_pb2.PredictRequest()
    valid.model_spec.name = "my_model"
    valid.inputs["image_bytes"].string_val.append(jpeg_bytes())
    valid.inputs["image_bytes"].dtype = 7
    valid.inputs["image_bytes"].tensor_shape.dim.add(size=1)
    edits = draw(
        st.lists(
            st.tuples(
                st.integers(0, 10**6),
                st.binary(min_size=1, max_size=4),
                st.sampled_from(["replace", "insert", "delete", "truncate"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return draw(
        st.sampled_from(
            [
                "/tensorflow.serving.PredictionService/Predict",
                "/tensorflow.serving.PredictionService/GetModelMetadata",
                "/tensorflow.serving.ModelService/GetModelStatus",
                "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
            ]
        )
    ), mutate(valid.SerializeToString(), edits)


@settings(max_examples=N_GRPC, **FUZZ_SETTINGS)
@given(call=grpc_calls())
def test_hostile_grpc_requests_never_a_server_fault(fuzz_stack, call):
    method_path, payload = call
    rpc = fuzz_stack["channel"].unary_unary(method_path, request_serializer=None, response_deserializer=None)
    try:
        rpc(payload, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert code not in SERVER_FAULTS, (method_path, payload[:200], error.details())
    GRPC_SENT.append(code)


def test_fuzz_volume_and_server_still_answers(fuzz_stack):

    assert len(REST_SENT) >= N_REST and len(GRPC_SENT) >= N_GRPC
    assert {200, 400, 404} <= set(REST_SENT)
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} <= set(GRPC_SENT)
    status, _, payload = fuzz_stack["loop"].run_until_complete(
        _asgi_call(
            fuzz_stack["app"].app,
            "POST",
            "/v1/models/my_model:predict",
            [(b"host", b"127.0.0.1:9000"), (b"content-type", b"application/json")],
            [json.dumps({"instances": [JPEG]}).encode()],
            False,
        )
    )
    assert status == 200 and len(json.loads(payload)["predictions"][0]["cc3"]) == 4
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "my_model"
    request.inputs["image_bytes"].string_val.append(jpeg_bytes())
    request.inputs["image_bytes"].dtype = 7
    request.inputs["image_bytes"].tensor_shape.dim.add(size=1)
    response = fuzz_stack["stub"].Predict(request, timeout=30)

    assert tf.make_ndarray(response.outputs["cc3"]).shape == (1, 4)
