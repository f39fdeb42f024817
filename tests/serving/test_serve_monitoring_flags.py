"""Prometheus metrics (exact counts), tensorflow_model_server's flags, config-file polling, client aborts."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serve_helpers import V1_BIAS, b64, free_port, install_version, jpeg_bytes, template
from starlette.testclient import TestClient
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tf_serving_compat.batching import BatchingParameters
from tf_serving_compat.cli import IGNORED_REAL_FLAGS, build_parser, warn_ignored_flags
from tf_serving_compat.factory import build_app
from tf_serving_compat.grpc_service import start_grpc_server
from tf_serving_compat.monitoring import PrometheusConfig, parse_monitoring_config
from tf_serving_compat.options import ServerOptions
from tf_serving_compat.poller import ConfigFilePoller

METRICS = "/monitoring/prometheus/metrics"


def sample(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample, 0 when absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\S+?)(?:\{(.*)\})? (\S+)", line)
        if not match or line.startswith("#") or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == str(v) for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_count_exactly_the_requests_sent(tmp_path):

    base = tmp_path / "my_model"
    install_version(template(V1_BIAS), base, 1)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}')
    app = build_app(
        ServerOptions(
            model_base_path=base,
            file_system_poll_wait_seconds=0,
            monitoring_config_file=monitoring,
            enable_batching=True,
            batching_parameters=BatchingParameters(max_batch_size=8, num_batch_threads=1),
        )
    )
    server = start_grpc_server(app, "127.0.0.1", free_port())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    try:
        with TestClient(app.app) as c:
            image = {"instances": [b64(jpeg_bytes())]}
            ok, bad, missing, grpc_ok, grpc_missing = 5, 3, 2, 4, 1
            for _ in range(ok):
                assert c.post("/v1/models/my_model:predict", json=image).status_code == 200
            for _ in range(bad):
                assert c.post("/v1/models/my_model:predict", json={"instances": []}).status_code == 400
            for _ in range(missing):
                assert c.post("/v1/models/my_model/versions/9:predict", json=image).status_code == 404
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "my_model"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array([jpeg_bytes()], dtype=object)))
            for _ in range(grpc_ok):
                stub.Predict(request, timeout=30)
            request.model_spec.version.value = 9
            for _ in range(grpc_missing):
                with pytest.raises(grpc.RpcError):
                    stub.Predict(request, timeout=30)
            response = c.get(METRICS)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            count = ":tensorflow:serving:request_count"
            assert sample(text, count, model_name="my_model", status="OK") == ok + grpc_ok
            assert sample(text, count, model_name="my_model", status="INVALID_ARGUMENT") == bad
            assert sample(text, count, model_name="my_model", status="NOT_FOUND") == missing + grpc_missing
            # prometheus_exporter.cc's TYPE lines: counter/gauge/histogram under TF Serving's exact names;
            # metrics TF Serving lacks are named :tf_serving_compat:..., never :tensorflow:...
            types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
            assert types == {
                ":tensorflow:serving:request_count": "counter",
                ":tensorflow:serving:request_latency": "histogram",
                ":tensorflow:serving:runtime_latency": "histogram",
                ":tf_serving_compat:batching:processed_batch_size": "histogram",
                ":tf_serving_compat:batching:queue_depth": "histogram",
                ":tf_serving_compat:model_state": "gauge",
            }
            assert f'{count}{{model_name="my_model",status="OK"}} {ok + grpc_ok}' in text.splitlines()  # integers
            assert "_created" not in text and "_total" not in text
            latency = ":tensorflow:serving:request_latency_count"
            assert sample(text, latency, model_name="my_model", API="predict", entrypoint="REST") == ok + bad + missing
            assert (
                sample(text, latency, model_name="my_model", API="predict", entrypoint="GRPC") == grpc_ok + grpc_missing
            )
            model_calls = ok + grpc_ok  # the others fail before the model
            assert sample(text, ":tensorflow:serving:runtime_latency_count", model_name="my_model") == model_calls
            batches = ":tf_serving_compat:batching:processed_batch_size"
            assert sample(text, batches + "_count", model_name="my_model") == model_calls
            assert sample(text, batches + "_sum", model_name="my_model") == model_calls  # one image each
            assert sample(text, ":tf_serving_compat:batching:queue_depth_count", model_name="my_model") == model_calls
            assert (
                sample(
                    text, ":tf_serving_compat:model_state", model_name="my_model", model_version="1", state="AVAILABLE"
                )
                == 1
            )
            assert (
                sample(
                    text, ":tf_serving_compat:model_state", model_name="my_model", model_version="1", state="LOADING"
                )
                == 0
            )
            assert sample(c.get(METRICS).text, count, model_name="my_model", status="OK") == ok + grpc_ok  # not counted
    finally:
        channel.close()
        server.stop(0).wait(10)
        app.close()


def test_monitoring_config_parsing(tmp_path):

    assert parse_monitoring_config('prometheus_config { enable: true path: "/m" }') == PrometheusConfig(True, "/m")
    assert parse_monitoring_config("prometheus_config { enable: true }").path == METRICS
    assert parse_monitoring_config("").enable is False
    with pytest.raises(ValueError, match="Invalid monitoring config"):
        parse_monitoring_config("prometheus_config { enabled: true }")
    with pytest.raises(ValueError, match="must start with '/'"):
        parse_monitoring_config('prometheus_config { enable: true path: "metrics" }')


# Every flag of tensorflow_model_server 2.21 (main.cc), with a sample value.
REAL_FLAGS = [
    "--port=8500",
    "--grpc_socket_path=/tmp/s",
    "--rest_api_port=8501",
    "--rest_api_num_threads=4",
    "--rest_api_timeout_in_ms=1000",
    "--rest_api_enable_cors_support=true",
    "--enable_batching",
    "--allow_version_labels_for_unavailable_models=true",
    "--batching_parameters_file=/b",
    "--enable_per_model_batching_parameters=false",
    "--model_config_file=/m",
    "--model_config_file_poll_wait_seconds=60",
    "--model_name=m",
    "--model_base_path=/p",
    "--num_load_threads=0",
    "--num_unload_threads=0",
    "--max_num_load_retries=5",
    "--load_retry_interval_micros=60000000",
    "--file_system_poll_wait_seconds=1",
    "--flush_filesystem_caches=true",
    "--tensorflow_session_parallelism=0",
    "--tensorflow_session_config_file=/s",
    "--tensorflow_intra_op_parallelism=0",
    "--tensorflow_inter_op_parallelism=0",
    "--use_alts_credentials=false",
    "--ssl_config_file=/x",
    "--platform_config_file=/x",
    "--per_process_gpu_memory_fraction=0.5",
    "--saved_model_tags=serve",
    "--grpc_channel_arguments=grpc.max_concurrent_streams=10",
    "--grpc_max_threads=8",
    "--enable_model_warmup=true",
    "--num_request_iterations_for_warmup=1",
    "--version",
    "--monitoring_config_file=/x",
    "--remove_unused_fields_from_bundle_metagraph=true",
    "--prefer_tflite_model=false",
    "--num_tflite_pools=1",
    "--num_tflite_interpreters_per_pool=1",
    "--enable_signature_method_name_check=false",
    "--xla_cpu_compilation_enabled=false",
    "--enable_profiler=true",
    "--thread_pool_factory_config_file=/x",
    "--mixed_precision=bfloat16",
    "--skip_initialize_tpu=true",
    "--enable_grpc_healthcheck_service=false",
    "--enable_serialization_as_tensor_content=false",
]


def test_every_real_flag_is_accepted_and_ignored_ones_warn_once(caplog):
    args = build_parser().parse_args(REAL_FLAGS)  # never exit 2 for a real flag
    assert (args.port, args.grpc_max_threads, args.enable_model_warmup) == (8500, 8, True)
    assert args.grpc_channel_arguments == "grpc.max_concurrent_streams=10"
    with caplog.at_level(logging.WARNING, logger="tf_serving_compat"):
        given = warn_ignored_flags(args)
    warned = [r.getMessage() for r in caplog.records if "accepts and ignores" in r.getMessage()]
    assert len(warned) == len(given) == len(set(given))
    assert {"tensorflow_session_parallelism", "allow_version_labels_for_unavailable_models"} <= set(given)
    assert set(given) <= set(IGNORED_REAL_FLAGS)
    assert build_parser().parse_args(["--enable_batching=false"]).enable_batching is False


def test_config_file_polling_adds_and_removes_models(tmp_path, caplog):
    first, second = tmp_path / "a", tmp_path / "b"
    install_version(template(V1_BIAS), first, 1)
    install_version(template(V1_BIAS), second, 3)
    config = tmp_path / "models.config"

    def write(models):
        config.write_text(
            "model_config_list {"
            + "".join(f' config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }}' for n, p in models)
            + " }"
        )

    write([("a", first)])
    app = build_app(ServerOptions(model_config_file=config, file_system_poll_wait_seconds=0))
    poller = ConfigFilePoller(config, app.registry, wait_seconds=3600)
    try:
        assert sorted(app.registry.models) == ["a"]
        assert poller.check_once() is False  # unchanged
        write([("a", first), ("b", second)])
        assert poller.check_once() is True
        assert app.registry.get("b").loaded_versions() == [3]
        write([("b", second)])
        assert poller.check_once() is True
        assert sorted(app.registry.models) == ["b"]
        config.write_text("model_config_list { nonsense }")
        with caplog.at_level(logging.ERROR, logger="tf_serving_compat"):
            assert poller.check_once() is False
        assert "Ignoring changed model config file" in caplog.text
        assert sorted(app.registry.models) == ["b"]  # a bad file changes nothing
    finally:
        app.close()


def test_client_abort_is_logged_as_abort_not_error(model_base, caplog):
    app = build_app(ServerOptions(model_base_path=model_base, file_system_poll_wait_seconds=0))
    messages = [{"type": "http.request", "body": b'{"instances": [', "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/models/my_model:predict",
        "raw_path": b"",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
    }
    try:
        with caplog.at_level(logging.INFO):
            asyncio.run(app.app(scope, receive, send))
    finally:
        app.close()
    assert sent == []  # nobody to answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Client aborted POST /v1/models/my_model:predict" in caplog.text
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tf_serving_compat.access"]
    assert access and access[-1]["status"] == 499 and access[-1]["aborted"] is True
