"""The TF Serving REST contract: routes, formats, numbers, errors, metadata, upload, limits."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from serve_helpers import IMAGE_SIZE, b64, jpeg_bytes, png_bytes, png_header_only, reference_outputs, write_warmup_file
from starlette.testclient import TestClient

from tf_serving_compat import tensor_json as tj
from tf_serving_compat.errors import ServingError
from tf_serving_compat.factory import build_app
from tf_serving_compat.options import ServerOptions

PREDICT = "/v1/models/my_model:predict"


def error_of(response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


# ---------------------------------------------------------------- number writer and JSON <-> tensor


@pytest.mark.parametrize(
    "value, text",
    [
        (0.1, "0.1"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (1e-5, "1e-05"),
        (9000000.0, "9e+06"),
        (100000.0, "100000.0"),
        (0.123456789, "0.123456791"),
        (0.5, "0.5"),
        (3.4028235e38, "3.40282347e+38"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
    ],
)
def test_float32_formatting_matches_tf_serving(value, text):
    assert tj.format_float(float(np.float32(value))) == text
    if math.isfinite(value):
        assert np.float32(float(text)) == np.float32(value)  # always round-trips


def test_double_formatting_and_bare_tokens():
    assert tj.format_float(0.1, double=True) == "0.1"
    assert tj.format_float(1 / 3, double=True) == "0.33333333333333331"
    assert (
        tj.dumps({"x": np.array([np.nan, np.inf, 1], np.float32), "n": np.int64(2**62)})
        == '{"x": [NaN, Infinity, 1.0], "n": 4611686018427387904}'
    )


def test_json_to_array_type_rules():
    assert tj.json_to_array([1, 2], "DT_INT64").tolist() == [1, 2]
    with pytest.raises(ServingError, match=r"JSON Value: 1.0 Type: Number is not of expected type: int64"):
        tj.json_to_array([1.0], "DT_INT64")
    with pytest.raises(ServingError, match="is not of expected type: bool"):
        tj.json_to_array([1], "DT_BOOL")
    assert tj.json_to_array([True, False], "DT_BOOL").tolist() == [True, False]
    with pytest.raises(ServingError, match="without loss of precision"):
        tj.json_to_array([16777217], "DT_FLOAT")
    assert tj.json_to_array([16777215, 0.5], "DT_FLOAT").dtype == np.float32
    with pytest.raises(ServingError, match="is not of expected type: float"):
        tj.json_to_array([True], "DT_FLOAT")
    with pytest.raises(ServingError, match="is not of expected type: int32"):
        tj.json_to_array([2**31], "DT_INT32")
    with pytest.raises(ServingError, match="Encountered list at unexpected size: 1 at level: 1 expected size: 2"):
        tj.json_to_array([[1, 2], [3]], "DT_FLOAT")
    with pytest.raises(ServingError, match="found at incorrect level"):
        tj.json_to_array([[1, 2], 3], "DT_FLOAT")
    with pytest.raises(ServingError, match="Encountered list at unexpected level"):
        tj.json_to_array([1, [2]], "DT_FLOAT")
    assert tj.json_to_array(["a", {"b64": "YWI="}], "DT_STRING").tolist() == [b"a", b"ab"]
    assert tj.json_to_array({"b64": "YWI"}, "DT_STRING").tolist() == b"ab"  # unpadded is fine
    with pytest.raises(ServingError, match="^Unable to base64 decode$"):
        tj.json_to_array({"b64": "_-8="}, "DT_STRING")  # URL-safe alphabet
    with pytest.raises(ServingError, match="not formatted correctly for base64 data"):
        tj.json_to_array({"b64": "YWI=", "x": 1}, "DT_STRING")
    with pytest.raises(ServingError) as info:
        tj.json_to_array([1.5], "DT_HALF")
    assert info.value.http_status == 501


def test_response_layouts():
    one = {"scores": np.array([[0.5, 1.0], [2.0, 0.25]], np.float32)}
    assert tj.predict_response_json(one, tj.ROW) == '{"predictions": [[0.5, 1.0], [2.0, 0.25]]}'
    assert tj.predict_response_json(one, tj.COLUMNAR) == '{"outputs": [[0.5, 1.0], [2.0, 0.25]]}'
    two = {"b": np.array([1, 2], np.int64), "a_bytes": np.array([b"\x00\xff", b"x"], object)}
    assert json.loads(tj.predict_response_json(two, tj.ROW)) == {
        "predictions": [{"a_bytes": {"b64": "AP8="}, "b": 1}, {"a_bytes": {"b64": "eA=="}, "b": 2}]
    }
    assert json.loads(tj.predict_response_json({"names": np.array([b"x"], object)}, tj.ROW)) == {"predictions": ["x"]}
    with pytest.raises(ServingError, match="has inconsistent batch size: 3 expecting: 2"):
        tj.predict_response_json({"a": np.zeros(2), "b": np.zeros(3)}, tj.ROW)


# ---------------------------------------------------------------- status, routing, malformed requests


def test_model_status(client):
    response = client.get("/v1/models/my_model")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert client.get("/v1/models/my_model/versions/1").json() == response.json()


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/my_model/versions/7", 404, "Could not find version 7 of model my_model"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v1/models/my_model/labels/stable", 400, "Unrecognized servable version label: stable"),
        ("GET", "/v1/models/my_model/version/1", 400, "Malformed request: GET /v1/models/my_model/version/1"),
        ("GET", "/v1/models/my_model/versions/abc", 400, "Malformed request: GET /v1/models/my_model/versions/abc"),
        (
            "GET",
            "/v1/models/my_model/versions/1/labels/x",
            400,
            "Malformed request: GET /v1/models/my_model/versions/1/labels/x",
        ),
        ("POST", "/v1/models/my_model", 400, "Malformed request: POST /v1/models/my_model"),
        ("GET", "/v1/models/my_model:predict", 400, "Malformed request: GET /v1/models/my_model:predict"),
        ("DELETE", "/v1/models/my_model", 400, "Malformed request: DELETE /v1/models/my_model"),
        ("PUT", "/v1/models/my_model:predict", 400, "Malformed request: PUT /v1/models/my_model:predict"),
        ("POST", "/v1/models/my_model:explain", 400, "Malformed request: POST /v1/models/my_model:explain"),
        ("GET", "/v1/anything", 400, "Malformed request: GET /v1/anything"),
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        (
            "POST",
            "/v1/models/my_model/versions/50:predict",
            404,
            "Servable not found for request: Specific(my_model, 50)",
        ),
        ("POST", "/v1/models/my_model/labels/canary:predict", 400, "Unrecognized servable version label: canary"),
        ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        (
            "GET",
            "/v1/models/my_model/versions/99999999999999999999",
            400,
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
    ],
)
def test_route_errors(client, method, path, status, message):
    body = json.dumps({"instances": [b64(jpeg_bytes())]}) if method == "POST" else None
    response = client.request(method, path, content=body)
    assert response.status_code == status
    assert error_of(response) == message


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/models/my_model"),
        ("GET", "/predict_image"),
        ("DELETE", "/healthz"),
        ("POST", "/v2/x"),
    ],
)
def test_outside_v1_is_404_json(client, method, path):
    response = client.request(method, path)
    assert response.status_code == 404
    assert error_of(response) == f"Not found: {method} {path}"


def test_paths_are_case_insensitive_and_url_decoded(client):
    response = client.post("/V1/Models/my_model:PREDICT", json={"instances": [b64(jpeg_bytes())]})
    assert response.status_code == 200
    assert client.get("/v1/models/my%5Fmodel").status_code == 200  # %5F is "_"


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"   ", "JSON Parse error: The document is empty"),
        (b"[1, 2]", "JSON Value: [1,2] Is not object"),
        (
            b'{"instances": [1], "inputs": [1]}',
            'JSON Value: {"instances":[1],"inputs":[1]} Not formatted correctly expecting only one of '
            "'inputs' or 'instances' keys to exist ",
        ),
        (b'{"signature_name": "serving_default"}', "Missing 'inputs' or 'instances' key"),
        (b'{"instances": []}', "JSON Value: {\"instances\":[]} No values in 'instances' array"),
        (b'{"instances": {"a": 1}}', 'JSON Value: {"instances":{"a":1}} Excepting \'instances\' to be an list/array'),
        (b'{"signature_name": "nope", "instances": [1]}', 'Serving signature name: "nope" not found in signature def'),
        (
            b'{"signature_name": 5, "instances": [1]}',
            'JSON Value: {"signature_name":5,"instances":[1]} not formatted correctly. '
            "'signature_name' key must be a string value.",
        ),
        (
            b'{"instances": [1]}',
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON Value: 1 Type: Number is not of expected type: string",
        ),
        (b'{"inputs": {"b64": "!!"}}', "Unable to base64 decode"),
        (b'{"inputs": {"other": ["x"]}}', "Missing named input: image_bytes in 'inputs' object."),
        (
            b'{"instances": [{"image_bytes": {"b64": "eA=="}, "extra": 1}]}',
            "Failed to process element: 0 key: extra of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON object: does not have named input: extra",
        ),
        (b'{"instances": [{"image_bytes": "eA=="}, "x"]}', "Expecting object but got list at item 1 of input list"),
        (
            b'{"signature_name": "__saved_model_init_op", "instances": [1]}',
            "Failed to get input map for signature: __saved_model_init_op",
        ),
    ],
)
def test_predict_request_errors(client, body, message):
    response = client.post(PREDICT, content=body)
    assert response.status_code == 400
    assert error_of(response) == message


def test_malformed_json_reports_offset(client):
    response = client.post(PREDICT, content=b'{"instances": [1,}')
    assert response.status_code == 400
    assert error_of(response).startswith("JSON Parse error: ")
    assert "at offset: " in error_of(response)


# ---------------------------------------------------------------- predictions equal the SavedModel


def _assert_outputs_equal(got: dict, expected: dict[str, np.ndarray]):
    assert set(got) == set(expected)
    for name, want in expected.items():
        if want.dtype == object:
            assert got[name] == [[v.decode() for v in row] for row in want.tolist()]
        elif want.dtype == np.float32:
            np.testing.assert_array_equal(np.asarray(got[name], np.float32), want)  # exact round-trip
        else:
            assert got[name] == want.tolist()


def _rows_to_columns(predictions: list[dict]) -> dict:
    return {key: [row[key] for row in predictions] for key in predictions[0]}


def test_predict_bytes_row_and_columnar_equal_saved_model(client, model_base):
    images = [jpeg_bytes((200, 30, 30)), png_bytes((20, 200, 30)), jpeg_bytes((10, 10, 240), noise=40)]
    expected = reference_outputs(model_base / "1", "serving_default", image_bytes=images)
    row = client.post(PREDICT, json={"instances": [b64(i) for i in images]})
    assert row.status_code == 200
    assert row.headers["content-type"] == "application/json"
    predictions = row.json()["predictions"]
    assert len(predictions) == 3
    assert set(predictions[0]) == {"cc3", "tags", "top2_codes", "top2_names", "tag_flags"}
    _assert_outputs_equal(_rows_to_columns(predictions), expected)
    columnar = client.post(PREDICT, json={"signature_name": "serving_default", "inputs": [b64(i) for i in images]})
    assert columnar.status_code == 200
    _assert_outputs_equal(columnar.json()["outputs"], expected)
    named = client.post(PREDICT, json={"instances": [{"image_bytes": b64(i)} for i in images]})
    assert named.json() == row.json()
    # A 1-row request is compared with a 1-row call: oneDNN picks batch-size-dependent kernels, so
    # row 0 of a 3-row call may differ from a 1-row call in the last float32 bit.
    expected_one = reference_outputs(model_base / "1", "serving_default", image_bytes=images[:1])
    explicit = client.post("/v1/models/my_model/versions/1:predict", json={"inputs": {"image_bytes": [b64(images[0])]}})
    assert explicit.status_code == 200
    _assert_outputs_equal(explicit.json()["outputs"], expected_one)


def test_predict_pixels_row_and_columnar_equal_saved_model(client, model_base):
    pixels = np.random.default_rng(1).random((2, *IMAGE_SIZE, 3)).astype(np.float32)
    expected = reference_outputs(model_base / "1", "serving_pixels", input_image=pixels)
    body = {"signature_name": "serving_pixels", "instances": pixels.tolist()}
    row = client.post(PREDICT, json=body)
    assert row.status_code == 200
    _assert_outputs_equal(_rows_to_columns(row.json()["predictions"]), expected)
    columnar = client.post(
        PREDICT, json={"signature_name": "serving_pixels", "inputs": {"input_image": pixels.tolist()}}
    )
    _assert_outputs_equal(columnar.json()["outputs"], expected)
    # JSON integers are valid floats (0 and 1 pixels).
    ints = np.zeros((1, *IMAGE_SIZE, 3), int).tolist()
    assert client.post(PREDICT, json={"signature_name": "serving_pixels", "instances": ints}).status_code == 200


def test_nan_input_gives_bare_nan_tokens(client):
    pixels = np.full((1, *IMAGE_SIZE, 3), 0.5).tolist()
    pixels[0][0][0][0] = float("nan")
    response = client.post(PREDICT, content=json.dumps({"signature_name": "serving_pixels", "instances": pixels}))
    assert response.status_code == 200
    assert '"cc3": [NaN, NaN, NaN, NaN]' in response.text


@pytest.mark.parametrize(
    "instances, fragment",
    [
        (
            [[[0.5] * 3] * IMAGE_SIZE[1]] * (IMAGE_SIZE[0] - 1) + [[[0.5] * 3] * (IMAGE_SIZE[1] - 1)],
            "Encountered list at unexpected size",
        ),
        ([np.zeros((5, 5, 3)).tolist()], "input tensor alias: input_image has shape [1,5,5,3] which is not compatible"),
        ([[["a"] * 3] * IMAGE_SIZE[1]] * IMAGE_SIZE[0], "is not of expected type: float"),
    ],
)
def test_pixel_input_errors(client, instances, fragment):
    if not isinstance(instances[0], list) or len(instances) != 1:
        instances = [instances]
    response = client.post(PREDICT, json={"signature_name": "serving_pixels", "instances": instances})
    assert response.status_code == 400
    assert fragment in error_of(response)


def test_bad_image_bytes_are_400_with_graph_message(client):
    response = client.post(PREDICT, json={"instances": [b64(b"definitely not an image")]})
    assert response.status_code == 400
    assert error_of(response).startswith("Unknown image file format.")
    assert client.post(PREDICT, json={"instances": [b64(jpeg_bytes())]}).status_code == 200  # still serving


def test_bad_base64_row_format(client):
    response = client.post(PREDICT, json={"instances": [{"b64": "abc$"}]})
    assert response.status_code == 400
    assert error_of(response) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 decode"
    )


def test_decompression_bomb_is_refused_before_the_graph(client):
    response = client.post(PREDICT, json={"instances": [b64(png_header_only(8000, 6000))]})
    assert response.status_code == 400
    assert error_of(response) == "Image of 8000x6000 pixels exceeds the limit of 12000000 pixels"


def test_instances_cap(client):
    one = b64(png_bytes(size=(2, 2)))
    response = client.post(PREDICT, json={"instances": [one] * 1025})
    assert response.status_code == 400
    assert error_of(response) == "Too many instances for input image_bytes: 1025 (the limit is 1024 per request)"


# ---------------------------------------------------------------- metadata, classify/regress


def test_metadata_shape(client):
    response = client.get("/v1/models/my_model/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": "my_model", "signature_name": "", "version": "1"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_pixels"} <= set(defs)
    default = defs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["defaults"] == {}
    assert default["inputs"] == {
        "image_bytes": {
            "dtype": "DT_STRING",
            "name": "serving_default_image_bytes:0",
            "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
        }
    }
    assert set(default["outputs"]) == {"cc3", "tags", "top2_codes", "top2_names", "tag_flags"}
    assert default["outputs"]["cc3"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in default["outputs"]["cc3"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert default["outputs"]["top2_names"]["dtype"] == "DT_STRING"
    assert default["outputs"]["tag_flags"]["dtype"] == "DT_INT64"
    pixels = defs["serving_pixels"]["inputs"]["input_image"]
    assert pixels["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in pixels["tensor_shape"]["dim"]] == ["-1", str(IMAGE_SIZE[0]), str(IMAGE_SIZE[1]), "3"]
    assert client.get("/v1/models/my_model/versions/1/metadata").json() == body


@pytest.mark.parametrize("verb, kind", [("classify", "classification"), ("regress", "regression")])
def test_classify_and_regress_on_predict_signature(client, verb, kind):
    response = client.post(f"/v1/models/my_model:{verb}", json={"examples": [{"x": [1.0]}]})
    assert response.status_code == 400
    assert error_of(response) == (
        f"Expected {kind} signature method_name to be tensorflow/serving/{verb}. Was: tensorflow/serving/predict"
    )
    missing = client.post(f"/v1/models/my_model:{verb}", json={"instances": [1]})
    assert missing.status_code == 400
    assert "key 'examples' is expected and was not found" in error_of(missing)
    assert client.post(f"/v1/models/nope:{verb}", json={"examples": [{}]}).status_code == 404


# ---------------------------------------------------------------- healthz, limits


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "models": {"my_model": [1]}}


def test_body_limit_413(model_base):

    app = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0, max_body_bytes=2000))
    try:
        with TestClient(app.app) as c:
            big = json.dumps({"instances": [b64(b"x" * 3000)]})
            response = c.post(PREDICT, content=big)
            assert response.status_code == 413
            assert error_of(response) == f"Request body of {len(big)} bytes exceeds the limit of 2000 bytes"

            def chunks():  # no Content-Length: the streamed body is counted
                for _ in range(5):
                    yield b" " * 1000

            streamed = c.post(PREDICT, content=chunks())
            assert streamed.status_code == 413
            assert error_of(streamed) == "Request body exceeds the limit of 2000 bytes"
            assert c.post(PREDICT, json={"instances": [b64(png_bytes(size=(2, 2)))]}).status_code == 200
    finally:
        app.close()


def test_timeout_is_504_and_server_recovers(model_base):

    # Warm both signatures at load, as a deployment would: a first call (graph optimisation)
    # on a busy 2-core machine can itself pass 200 ms, and "recovers" must not hinge on that.
    write_warmup_file(
        model_base / "1",
        [
            ("serving_default", {"image_bytes": np.array([jpeg_bytes()], dtype=object)}),
            ("serving_pixels", {"input_image": np.zeros((1, *IMAGE_SIZE, 3), np.float32)}),
        ],
    )
    app = build_app(
        ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0, rest_api_timeout_in_ms=200)
    )
    loaded = app.registry.get("my_model").resolve()
    real_run = loaded.run

    def slow_run(signature, inputs):
        if signature == "serving_pixels":
            time.sleep(2.0)
        return real_run(signature, inputs)

    loaded.run = slow_run
    try:
        with TestClient(app.app) as c:
            pixels = np.zeros((1, *IMAGE_SIZE, 3)).tolist()
            started = time.monotonic()
            response = c.post(PREDICT, json={"signature_name": "serving_pixels", "instances": pixels})
            assert response.status_code == 504
            assert error_of(response) == "Deadline Exceeded: no result within 200 ms"
            assert time.monotonic() - started < 1.5  # the answer did not wait for the model call
            assert c.post(PREDICT, json={"instances": [b64(jpeg_bytes())]}).status_code == 200
    finally:
        app.close()


@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_json_is_a_clean_400(client, depth):
    body = '{"signature_name": "serving_pixels", "instances": ' + "[" * depth + "1" + "]" * depth + "}"
    response = client.post(PREDICT, content=body)
    assert response.status_code == 400
    assert "exceeds the maximum tensor rank of 254" in error_of(response) or error_of(response).startswith(
        "JSON Parse error"
    )
    assert client.get("/v1/models/my_model").status_code == 200
