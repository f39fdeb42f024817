"""Infra validation: the candidate loaded by a server in a subprocess, exactly as it will be served.

``vinted serve`` starts the real ``tensorflow_model_server`` when it is on PATH, else ours, with the
serving files ``vinted export`` writes (session config for this host's rewrite decision, batching,
warm-up). Golden requests go over REST and gRPC; every answer must equal the in-process
SavedModel's answer for the same images within ``release.infra_atol`` (probabilities), with the
same top-2 wherever the top-2 is not a tie within that tolerance.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ..contract import DEFAULT_SIGNATURE, TAGS_OUTPUT
from ..serving_files import write_serving_config
from .checks import Check

LOG_TAIL = 1500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerFailed(RuntimeError):
    """The server exited, reported the version as failed, or never became AVAILABLE."""


def server_command(base_path: Path, model_name: str, rest_port: int, grpc_port: int, rewrite: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vinted_classifier.cli",
        "serve",
        f"--rest_api_port={rest_port}",
        f"--port={grpc_port}",
        f"--model_name={model_name}",
        f"--model_base_path={base_path}",
        f"--mixed_precision_rewrite={rewrite}",
    ]


def _log_tail(log_file) -> str:
    log_file.flush()
    log_file.seek(0)
    return log_file.read()[-LOG_TAIL:]


def wait_available(process: subprocess.Popen, log_file, rest_port: int, model_name: str, timeout: float) -> None:
    url = f"http://127.0.0.1:{rest_port}/v1/models/{model_name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"server exited with code {process.returncode}: {_log_tail(log_file)}")
        try:
            statuses = requests.get(url, timeout=2).json().get("model_version_status", [])
        except (requests.ConnectionError, requests.Timeout, ValueError):
            statuses = []
        for status in statuses:
            if status.get("state") == "AVAILABLE":
                return
            error = status.get("status", {})
            if status.get("state") == "END" and error.get("error_code", "OK") != "OK":
                raise ServerFailed(
                    f"version {status.get('version')} failed to load or warm up: "
                    f"{error.get('error_code')}: {error.get('error_message', '')[:LOG_TAIL]}"
                )
        time.sleep(0.5)
    raise ServerFailed(f"not AVAILABLE within {timeout:.0f}s: {_log_tail(log_file)}")


def rest_outputs(port: int, model_name: str, images: list[bytes]) -> dict[str, np.ndarray]:
    body = {
        "signature_name": DEFAULT_SIGNATURE,
        "instances": [{"b64": base64.b64encode(image).decode()} for image in images],
    }
    response = requests.post(f"http://127.0.0.1:{port}/v1/models/{model_name}:predict", json=body, timeout=120)
    if response.status_code != 200:
        raise ServerFailed(f"REST predict answered {response.status_code}: {response.text[:LOG_TAIL]}")
    rows = response.json()["predictions"]
    return {key: np.asarray([row[key] for row in rows]) for key in rows[0]}


def grpc_outputs(port: int, model_name: str, images: list[bytes]) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = DEFAULT_SIGNATURE
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array(images, dtype=object)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
        except grpc.RpcError as error:
            raise ServerFailed(f"gRPC Predict failed: {error.code().name}: {error.details()}") from None
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def agreement(
    protocol: str, served: dict[str, np.ndarray], offline: dict[str, np.ndarray], category_output: str, atol: float
) -> Check:
    """Probabilities within ``atol``; top-2 equal except where offline's 2nd and 3rd are tied within ``atol``."""
    diffs = [
        float(np.abs(np.asarray(served[key], np.float64) - offline[key]).max())
        for key in (category_output, TAGS_OUTPUT)
    ]
    worst = max(diffs)
    problems = [] if worst <= atol else [f"probabilities differ by up to {worst:.3g}"]
    ranked = np.sort(offline[category_output], axis=1)[:, ::-1]
    clear = ranked[:, 1] - ranked[:, 2] > atol if ranked.shape[1] > 2 else np.ones(len(ranked), bool)
    served_top2 = np.sort(np.asarray(served["top2_codes"]), axis=1)
    top2_mismatch = (served_top2 != np.sort(offline["top2_codes"], axis=1)).any(axis=1)
    if (top2_mismatch & clear).any():
        problems.append(f"top-2 differs on {int((top2_mismatch & clear).sum())} of {len(clear)} golden images")
    return Check(
        f"infra {protocol} = offline",
        worst,
        atol,
        not problems,
        "; ".join(problems) or f"{len(clear)} golden images agree",
    )


def validate_in_server(
    candidate: Path,
    model_name: str,
    golden: list[bytes],
    offline: dict[str, np.ndarray],
    category_output: str,
    *,
    atol: float,
    timeout: float,
    rewrite: str = "auto",
) -> list[Check]:
    """Serve ``candidate`` from a temporary base path; one check for loading, one per protocol."""
    with tempfile.TemporaryDirectory(prefix="vinted-infra-") as folder:
        root = Path(folder) / "saved_model"
        base = root / model_name
        base.mkdir(parents=True)
        os.symlink(Path(candidate).resolve(), base / "1", target_is_directory=True)
        write_serving_config(root, model_name)  # the launcher then gives the real binary the export's flags
        rest_port, grpc_port = free_port(), free_port()
        with tempfile.TemporaryFile(mode="w+") as log_file:
            process = subprocess.Popen(
                server_command(base, model_name, rest_port, grpc_port, rewrite),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                text=True,
            )
            started = time.monotonic()
            try:
                try:
                    wait_available(process, log_file, rest_port, model_name, timeout)
                except ServerFailed as error:
                    return [Check("infra loads and warms up", None, None, False, str(error))]
                checks = [
                    Check(
                        "infra loads and warms up",
                        round(time.monotonic() - started, 1),
                        timeout,
                        True,
                        "seconds to AVAILABLE (limit: infra_timeout_seconds)",
                    )
                ]
                ports = {"REST": rest_port, "gRPC": grpc_port}
                checks += _protocol_checks(ports, model_name, golden, offline, category_output, atol, log_file)
                return checks
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _protocol_checks(
    ports: dict[str, int],
    model_name: str,
    golden: list[bytes],
    offline: dict[str, np.ndarray],
    category_output: str,
    atol: float,
    log_file,
) -> list[Check]:
    """One agreement check per protocol; a failed query is a failed check carrying the server log's tail."""
    checks = []
    for protocol, query in (("REST", rest_outputs), ("gRPC", grpc_outputs)):
        try:
            served = query(ports[protocol], model_name, golden)
        except ServerFailed as error:
            detail = f"{error}; server log: {_log_tail(log_file)[-600:]}"
            checks.append(Check(f"infra {protocol} = offline", None, atol, False, detail))
            continue
        checks.append(agreement(protocol, served, offline, category_output, atol))
    return checks
