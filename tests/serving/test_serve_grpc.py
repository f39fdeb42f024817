"""gRPC contract: the real tensorflow-serving-api client gets what REST answers for the same request."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from serve_helpers import IMAGE_SIZE, V1_BIAS, V2_BIAS, b64, free_port, install_version, jpeg_bytes, png_bytes, template
from starlette.testclient import TestClient
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tf_serving_compat.factory import build_app
from tf_serving_compat.grpc_service import start_grpc_server
from tf_serving_compat.options import ServerOptions

CODE_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    501: grpc.StatusCode.UNIMPLEMENTED,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One app on two versions with labels, REST test client + gRPC on a free loopback port."""

    root = tmp_path_factory.mktemp("grpc")
    base = root / "my_model"
    install_version(template(V1_BIAS), base, 1)
    install_version(template(V2_BIAS), base, 2)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{ config {{ name: "my_model" base_path: "{base}"
        model_platform: "tensorflow" model_version_policy {{ all {{}} }}
        version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }} }}""")
    app = build_app(ServerOptions(model_config_file=config, file_system_poll_wait_seconds=0, max_body_bytes=256 * 1024))
    server = start_grpc_server(app, "127.0.0.1", free_port())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    try:
        with TestClient(app.app) as rest:
            yield {
                "rest": rest,
                "app": app,
                "base": base,
                "root": root,
                "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
                "model": model_service_pb2_grpc.ModelServiceStub(channel),
            }
    finally:
        channel.close()
        server.stop(0).wait(10)
        app.close()


def predict_request(signature: str = "", version: int | None = None, label: str | None = None, **inputs):

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "my_model"
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_outputs(response) -> dict[str, np.ndarray]:

    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def assert_same_as_rest(grpc_out: dict[str, np.ndarray], rest_outputs: dict):
    assert set(grpc_out) == set(rest_outputs)
    for alias, array in grpc_out.items():
        if array.dtype == object:
            assert [[v.decode() for v in row] for row in array.tolist()] == rest_outputs[alias]
        elif array.dtype == np.float32:
            np.testing.assert_array_equal(array, np.asarray(rest_outputs[alias], np.float32))
        else:
            assert array.tolist() == rest_outputs[alias]


@pytest.mark.parametrize(
    "path, spec, expected_version",
    [
        ("/v1/models/my_model:predict", {}, 2),
        ("/v1/models/my_model/versions/1:predict", {"version": 1}, 1),
        ("/v1/models/my_model/labels/stable:predict", {"label": "stable"}, 1),
    ],
)
def test_predict_bytes_equals_rest(stack, path, spec, expected_version):
    images = [jpeg_bytes((200, 30, 30), noise=20), png_bytes((20, 200, 30))]
    rest = stack["rest"].post(path, json={"inputs": {"image_bytes": [b64(i) for i in images]}})
    assert rest.status_code == 200
    response = stack["predict"].Predict(predict_request(image_bytes=np.array(images, dtype=object), **spec), timeout=60)
    assert response.model_spec.name == "my_model"
    assert response.model_spec.version.value == expected_version
    assert response.model_spec.signature_name == "serving_default"
    assert_same_as_rest(grpc_outputs(response), rest.json()["outputs"])


def test_predict_pixels_and_output_filter_equal_rest(stack):
    pixels = np.random.default_rng(3).random((2, *IMAGE_SIZE, 3)).astype(np.float32)
    rest = stack["rest"].post(
        "/v1/models/my_model:predict",
        json={"signature_name": "serving_pixels", "inputs": {"input_image": pixels.tolist()}},
    )
    assert rest.status_code == 200
    request = predict_request("serving_pixels", input_image=pixels)
    response = stack["predict"].Predict(request, timeout=60)
    assert_same_as_rest(grpc_outputs(response), rest.json()["outputs"])
    request.output_filter.append("cc3")
    filtered = stack["predict"].Predict(request, timeout=60)
    assert set(filtered.outputs) == {"cc3"}
    np.testing.assert_array_equal(grpc_outputs(filtered)["cc3"], grpc_outputs(response)["cc3"])


def test_metadata_equals_rest(stack):

    rest = stack["rest"].get("/v1/models/my_model/versions/1/metadata").json()
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "my_model"
    request.model_spec.version.value = 1
    request.metadata_field.append("signature_def")
    response = stack["predict"].GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    as_json = json_format.MessageToDict(
        signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert as_json == rest["metadata"]["signature_def"]


def test_status_equals_rest(stack):

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "my_model"
    response = stack["model"].GetModelStatus(request, timeout=30)
    rest = stack["rest"].get("/v1/models/my_model").json()["model_version_status"]
    got = [
        {
            "version": str(s.version),
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
            "status": {
                "error_code": "OK" if s.status.error_code == 0 else str(s.status.error_code),
                "error_message": s.status.error_message,
            },
        }
        for s in response.model_version_status
    ]
    assert got == rest
    assert [s.version for s in response.model_version_status] == [2, 1]


def _rest_error(stack, path: str, body: dict) -> tuple[grpc.StatusCode, str]:
    response = stack["rest"].post(path, json=body)
    return CODE_OF_HTTP[response.status_code], response.json()["error"]


def _grpc_error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(
    "path, body, spec, inputs",
    [
        ("/v1/models/nope:predict", {"inputs": [b64(b"not an image")]}, {"name": "nope"}, None),
        ("/v1/models/my_model/versions/7:predict", {"inputs": [b64(b"not an image")]}, {"version": 7}, None),
        ("/v1/models/my_model/labels/beta:predict", {"inputs": [b64(b"not an image")]}, {"label": "beta"}, None),
        (
            "/v1/models/my_model:predict",
            {"signature_name": "nope", "inputs": [b64(b"not an image")]},
            {"signature": "nope"},
            None,
        ),
        ("/v1/models/my_model:predict", {"inputs": [b64(b"not an image")]}, {}, None),
        (
            "/v1/models/my_model:predict",
            {"signature_name": "serving_pixels", "inputs": {"input_image": np.zeros((1, 5, 5, 3)).tolist()}},
            {"signature": "serving_pixels"},
            {"input_image": np.zeros((1, 5, 5, 3), np.float32)},
        ),
    ],
)
def test_predict_errors_equal_rest(stack, path, body, spec, inputs):
    request = predict_request(
        spec.get("signature", ""),
        spec.get("version"),
        spec.get("label"),
        **(inputs or {"image_bytes": np.array([b"not an image"], dtype=object)}),
    )
    if "name" in spec:
        request.model_spec.name = spec["name"]
    assert _grpc_error(stack["predict"].Predict, request) == _rest_error(stack, path, body)


def test_grpc_only_input_checks(stack):
    """Checks REST expresses in JSON terms: the TensorProto's dtype, names, size; output_filter."""
    predict = stack["predict"].Predict
    code, message = _grpc_error(predict, predict_request(image_bytes=np.zeros((1,), np.float32)))
    assert (code, message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input tensor alias: image_bytes has dtype float but the signature expects string",
    )
    code, message = _grpc_error(
        predict, predict_request(image_bytes=np.array([b"x"], dtype=object), extra=np.zeros(1, np.float32))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == (
        "input size does not match signature: 2!=1 len({extra,image_bytes}) != len({image_bytes}). "
        "Sent extra: {extra}. Missing but required: {}."
    )
    request = predict_request(image_bytes=np.array([jpeg_bytes()], dtype=object))
    request.output_filter.append("logits")
    code, message = _grpc_error(predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("output tensor alias not found in signature: logits")
    huge = predict_request(image_bytes=np.array([b"x" * (300 * 1024)], dtype=object))
    assert _grpc_error(predict, huge)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # over max_body_bytes
    bomb = predict_request("serving_pixels", input_image=np.zeros((1, 1, 1, 3), np.float32))
    bomb.inputs["input_image"].tensor_shape.dim[1].size = 10**6  # announces 10^12 values, holds 3
    bomb.inputs["input_image"].tensor_shape.dim[2].size = 10**6
    code, message = _grpc_error(predict, bomb)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the decoded size limit" in message
    assert predict(predict_request(image_bytes=np.array([jpeg_bytes()], dtype=object)), timeout=60).outputs


def test_classify_regress_multi_inference_on_predict_signatures(stack):

    for verb, message_type, call in [
        ("classify", classification_pb2.ClassificationRequest, "Classify"),
        ("regress", regression_pb2.RegressionRequest, "Regress"),
    ]:
        request = message_type()
        request.model_spec.name = "my_model"
        request.input.example_list.examples.add()
        code, message = _grpc_error(getattr(stack["predict"], call), request)
        rest = stack["rest"].post(f"/v1/models/my_model:{verb}", json={"examples": [{"x": [1.0]}]})
        assert (code, message) == (CODE_OF_HTTP[rest.status_code], rest.json()["error"])
    multi = inference_pb2.MultiInferenceRequest()
    assert _grpc_error(stack["predict"].MultiInference, multi) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Tasks must be non-empty",
    )
    task = multi.tasks.add()
    task.model_spec.name = "my_model"
    task.method_name = "tensorflow/serving/classify"
    assert _grpc_error(stack["predict"].MultiInference, multi) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )


def test_reload_config_adds_and_removes_models_and_labels(stack):

    other = stack["root"] / "other"
    install_version(template(V1_BIAS), other, 5)
    request = model_management_pb2.ReloadConfigRequest()
    for name, base, labels in [("my_model", stack["base"], {"stable": 2}), ("other", other, {})]:
        config = request.config.model_config_list.config.add()
        config.name, config.base_path, config.model_platform = name, str(base), "tensorflow"
        config.model_version_policy.all.SetInParent()
        config.version_labels.update(labels)
    stack["model"].HandleReloadConfigRequest(request, timeout=60)
    rest = stack["rest"]
    assert rest.get("/v1/models/other").json()["model_version_status"][0]["version"] == "5"
    image = {"instances": [b64(jpeg_bytes())]}
    assert (
        rest.post("/v1/models/my_model/labels/stable:predict", json=image).json()
        == rest.post("/v1/models/my_model/versions/2:predict", json=image).json()
    )
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "other"
    assert stack["model"].GetModelStatus(status, timeout=30).model_version_status[0].version == 5
    del request.config.model_config_list.config[1]
    request.config.model_config_list.config[0].version_labels["stable"] = 1
    stack["model"].HandleReloadConfigRequest(request, timeout=60)
    assert rest.post("/v1/models/other:predict", json=image).status_code == 404
    assert (
        rest.post("/v1/models/my_model/labels/stable:predict", json=image).json()
        == rest.post("/v1/models/my_model/versions/1:predict", json=image).json()
    )
    bad = model_management_pb2.ReloadConfigRequest()
    bad.config.model_config_list.config.add(name="", base_path="/x")
    assert _grpc_error(stack["model"].HandleReloadConfigRequest, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert rest.get("/v1/models/my_model").status_code == 200  # a bad config changes nothing
