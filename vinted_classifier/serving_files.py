"""The files ``tensorflow_model_server`` needs beside the exported versions, and its command line.

``vinted export`` writes them to ``<saved_model_dir>/serving_config/`` (regenerated on every
export, each file written to a temporary name and renamed):

``models.config``            ModelServerConfig: the model's absolute base path on this machine
``models.container.config``  the same for the ``tensorflow/serving`` image (``/models/<name>``)
``batching.config``          BatchingParameters for ``--enable_batching``
``monitoring.config``        MonitoringConfig: Prometheus metrics at ``/monitoring/prometheus/metrics``
``session_default.config``   empty ConfigProto: float32 everywhere (AVX2 / AVX-512 without bf16)
``session_bf16.config``      ConfigProto switching oneDNN's bf16 auto-mixed-precision rewrite on
``session_gpu.config``       ConfigProto switching the float16 auto-mixed-precision rewrite on

Every file is protobuf text format, parsed by the tests with the real message classes, so the
real binary reads them as our server does. :func:`real_server_args` picks the session file
for this host (``hostinfo``); a bf16 session file on a CPU without bf16 units
would make the real server fail every convolution, so it is never chosen there.
"""

from __future__ import annotations

from pathlib import Path

from hostinfo import RewriteDecision

from .utils import atomic_path

CONFIG_DIR_NAME = "serving_config"
CONTAINER_MODELS_ROOT = "/models"
SESSION_FILES = {"off": "session_default.config", "bf16": "session_bf16.config", "fp16": "session_gpu.config"}
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
FILE_SYSTEM_POLL_SECONDS = 30
MODEL_CONFIG_POLL_SECONDS = 60
_HEADER = "# Written by `vinted export`; regenerated on every export (edits are overwritten).\n"


def model_server_config(
    model_name: str, base_path: str, versions: list[int] | None = None, labels: dict[str, int] | None = None
) -> str:
    """ModelServerConfig text: one TensorFlow model.

    Without ``versions``: TF Serving's default policy (latest version). With them (the release
    gate, ``vinted_classifier.release.rollout``): exactly those versions stay loaded, and
    ``labels`` (``stable``, ``canary``) name some of them for ``/labels/<label>`` requests.
    """
    policy = ""
    if versions:
        listed = " ".join(f"versions: {int(v)}" for v in sorted(set(versions)))
        policy = f"    model_version_policy {{\n      specific {{ {listed} }}\n    }}\n"
    label_lines = "".join(
        f'    version_labels {{ key: "{key}" value: {int(value)} }}\n' for key, value in sorted((labels or {}).items())
    )
    return (
        f'{_HEADER}model_config_list {{\n  config {{\n    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n    model_platform: "tensorflow"\n{policy}{label_lines}  }}\n}}\n'
    )


def batching_config(max_batch_size: int = 32, batch_timeout_micros: int = 1000, max_enqueued_batches: int = 64) -> str:
    """BatchingParameters text for CPU serving.

    num_batch_threads is left out so each server uses its own core count (TF Serving's default);
    a short timeout keeps single requests fast while concurrent ones share a batch.
    """
    return (
        f"{_HEADER}max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
        "pad_variable_length_inputs: false\n"
    )


def monitoring_config() -> str:
    return f'{_HEADER}prometheus_config {{\n  enable: true\n  path: "{PROMETHEUS_PATH}"\n}}\n'


def session_config(mode: str) -> str:
    """ConfigProto text for one rewrite mode (``off``, ``bf16``, ``fp16``)."""
    if mode == "off":
        return f"{_HEADER}# float32 graph as exported: right for CPUs without AVX512_BF16/AMX.\n"
    if mode == "bf16":
        return (
            f"{_HEADER}# Only for CPUs with AVX512_BF16 or AMX: elsewhere every convolution fails or crawls.\n"
            "graph_options {\n  rewrite_options {\n    auto_mixed_precision_onednn_bfloat16: ON\n  }\n}\n"
        )
    if mode == "fp16":
        return (
            f"{_HEADER}# For GPUs with compute capability >= 7.0 (tensor cores).\n"
            "gpu_options {\n  allow_growth: true\n}\n"
            "graph_options {\n  rewrite_options {\n    auto_mixed_precision: ON\n  }\n}\n"
        )
    raise ValueError(f"session config mode {mode!r}: expected one of {', '.join(SESSION_FILES)}")


def write_serving_config(
    saved_model_dir: str | Path,
    model_name: str,
    versions: list[int] | None = None,
    labels: dict[str, int] | None = None,
) -> Path:
    """Write every serving file for ``model_name`` under ``<saved_model_dir>/serving_config``.

    ``versions``/``labels``: the release gate's served versions and version labels (see
    ``model_server_config``); without them the model config serves the latest version.
    """
    saved_model_dir = Path(saved_model_dir)
    folder = saved_model_dir / CONFIG_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "models.config": model_server_config(
            model_name, str((saved_model_dir / model_name).resolve()), versions, labels
        ),
        "models.container.config": model_server_config(
            model_name, f"{CONTAINER_MODELS_ROOT}/{model_name}", versions, labels
        ),
        "batching.config": batching_config(),
        "monitoring.config": monitoring_config(),
        **{name: session_config(mode) for mode, name in SESSION_FILES.items()},
    }
    for name, text in files.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_text(text)
    return folder


def real_server_args(
    config_dir: str | Path, decision: RewriteDecision, rest_port: int = 9000, grpc_port: int = 8500
) -> list[str]:
    """``tensorflow_model_server`` flags serving what ``write_serving_config`` wrote, for this host."""
    config_dir = Path(config_dir).resolve()
    return [
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={config_dir / 'models.config'}",
        f"--model_config_file_poll_wait_seconds={MODEL_CONFIG_POLL_SECONDS}",
        f"--file_system_poll_wait_seconds={FILE_SYSTEM_POLL_SECONDS}",
        "--enable_batching=true",
        f"--batching_parameters_file={config_dir / 'batching.config'}",
        f"--monitoring_config_file={config_dir / 'monitoring.config'}",
        f"--tensorflow_session_config_file={config_dir / SESSION_FILES[decision.mode]}",
        "--enable_model_warmup=true",
    ]
