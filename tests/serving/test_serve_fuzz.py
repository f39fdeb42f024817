"""Fuzz: >= 1,000 malformed requests, no 5xx (except documented 503/504), server still answers."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import IMAGE_SIZE, V1_BIAS, b64, install_version, jpeg_bytes, template

N_EXAMPLES = 1000
SENT: list[int] = []  # status codes of every fuzz request

JPEG = b64(jpeg_bytes())

json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_value = st.recursive(
    json_leaf, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10)
b64_value = (st.text(alphabet="ABCxyz019+/=-_$ \n", max_size=12).map(lambda s: {"b64": s})
             | st.binary(max_size=24).map(lambda b: {"b64": base64.b64encode(b).decode()})
             | st.just(JPEG)
             | st.just({"b64": JPEG["b64"], "extra": 1}))
pixels = st.integers(0, 3).flatmap(
    lambda h: st.lists(st.lists(st.lists(st.floats(-2, 2) | st.integers(-3, 3) | st.text(max_size=2), min_size=3,
                                         max_size=3), min_size=IMAGE_SIZE[1] - 1, max_size=IMAGE_SIZE[1]),
                       min_size=h, max_size=h))
instance = json_value | b64_value | pixels | st.dictionaries(st.sampled_from(["image_bytes", "input_image", "x"]),
                                                             json_value | b64_value, max_size=2)
document = st.fixed_dictionaries({}, optional={
    "signature_name": st.sampled_from(["serving_default", "serving_pixels", "", "nope"]) | json_leaf,
    "instances": st.lists(instance, max_size=3) | json_value,
    "inputs": instance | st.lists(instance, max_size=2),
    "examples": st.lists(json_value, max_size=2) | json_value,
    "context": json_value,
})
body = (document.map(json.dumps) | json_value.map(json.dumps) | st.binary(max_size=48)
        | st.text(max_size=24).map(str.encode) | st.just(b""))
known_paths = st.sampled_from([
    "/v1/models/my_model:predict", "/v1/models/my_model:classify", "/v1/models/my_model:regress",
    "/v1/models/my_model", "/v1/models/my_model/metadata", "/v1/models/my_model/versions/1:predict",
    "/v1/models/my_model/versions/2", "/v1/models/my_model/labels/stable:predict", "/v1/models",
    "/v1/models/other:predict", "/v1/models/my_model/versions/1/labels/a:predict", "/v1/", "/v1",
    "/predict_image", "/models/my_model/predict_image", "/healthz", "/", "/V1/MODELS/my_model:PREDICT",
    "/v1/models/my_model/versions/-1", "/v1/models/my_model/versions/99999999999999999999999:predict",
])
random_path = st.text(alphabet="abcdelmnoprstv01:/._-", max_size=40).map(lambda s: "/" + s.lstrip("/"))
prefixed_path = st.text(alphabet="abcdelmnoprstv01:/._-", max_size=30).map(lambda s: "/v1/models/" + s)
path = known_paths | random_path | prefixed_path
method = st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
content_type = st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=xyz",
                                "image/jpeg", "application/octet-stream"])


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    from starlette.testclient import TestClient

    from tf_serving_compat.server import build_app

    base = tmp_path_factory.mktemp("fuzz") / "my_model"
    install_version(template(V1_BIAS), base, 1)
    app = build_app(model_base_path=base, file_system_poll_wait_seconds=0, max_body_bytes=64 * 1024)
    with TestClient(app.app, raise_server_exceptions=True) as client:
        yield client
    app.close()


@settings(max_examples=N_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(method=method, path=path, body=body, content_type=content_type)
def test_malformed_requests_never_5xx(fuzz_client, method, path, body, content_type):
    response = fuzz_client.request(method, path, content=body if method not in ("GET", "HEAD") else None,
                                   headers={"content-type": content_type})
    SENT.append(response.status_code)
    assert response.status_code < 500 or response.status_code in (503, 504), (method, path, body, response.text)
    if method != "HEAD":
        assert response.headers["content-type"].startswith("application/json")
        payload = response.json()
        if response.status_code >= 400:
            assert set(payload) == {"error"} and isinstance(payload["error"], str) and payload["error"]


def test_fuzz_volume_and_server_still_answers(fuzz_client):
    assert len(SENT) >= N_EXAMPLES
    assert any(code == 200 for code in SENT) and any(code == 400 for code in SENT) and any(code == 404 for code in SENT)
    response = fuzz_client.post("/v1/models/my_model:predict", json={"instances": [JPEG]})
    assert response.status_code == 200
    assert len(response.json()["predictions"][0]["cc3"]) == 4
    assert fuzz_client.get("/v1/models/my_model").json()["model_version_status"][0]["state"] == "AVAILABLE"
