"""The command line: tensorflow_model_server's flags (and a few of ours), parsed into ``ServerOptions``.

Every flag of the real binary is accepted: the implemented ones act, the others
(``IGNORED_REAL_FLAGS``) warn once and are ignored. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import argparse
import logging

from .execution import DEFAULT_EXECUTION_MEMORY_BYTES
from .images import DEFAULT_DECODE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS
from .options import DEFAULT_GRPC_PORT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MODEL_NAME, DEFAULT_REST_PORT, ServerOptions

log = logging.getLogger("tf_serving_compat")

DEFAULT_PROG = "tensorflow_model_server (tf_serving_compat)"

# tensorflow_model_server flags that this server accepts but does not act on: name -> value type.
# (Implemented flags are declared in build_parser.) Passing one logs a warning once.
IGNORED_REAL_FLAGS: dict[str, type] = {
    "grpc_socket_path": str,
    "rest_api_enable_cors_support": bool,
    "enable_per_model_batching_parameters": bool,
    "allow_version_labels_for_unavailable_models": bool,
    "num_load_threads": int,
    "num_unload_threads": int,
    "max_num_load_retries": int,
    "load_retry_interval_micros": int,
    "flush_filesystem_caches": bool,
    "tensorflow_session_parallelism": int,
    "use_alts_credentials": bool,
    "ssl_config_file": str,
    "platform_config_file": str,
    "per_process_gpu_memory_fraction": float,
    "saved_model_tags": str,
    "version": bool,
    "remove_unused_fields_from_bundle_metagraph": bool,
    "prefer_tflite_model": bool,
    "num_tflite_pools": int,
    "num_tflite_interpreters_per_pool": int,
    "enable_signature_method_name_check": bool,
    "xla_cpu_compilation_enabled": bool,
    "xla_gpu_compilation_enabled": bool,
    "enable_profiler": bool,
    "thread_pool_factory_config_file": str,
    "mixed_precision": str,
    "skip_initialize_tpu": bool,
    "enable_grpc_healthcheck_service": bool,
    "enable_serialization_as_tensor_content": bool,
}
# Flags that only this server has (never passed to the real binary).
OWN_FLAGS = (
    "host",
    "max_body_bytes",
    "max_image_pixels",
    "image_decode_pixels",
    "max_instances",
    "log_level",
    "mixed_precision_rewrite",
    "http_stack",
    "max_execution_batch_size",
    "execution_memory_mb",
    "max_inflight_images",
)


def _bool_flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_bool(p: argparse.ArgumentParser, name: str, default: bool | None, help_text: str) -> None:
    p.add_argument(f"--{name}", type=_bool_flag, nargs="?", const=True, default=default, help=help_text)


def boolean_flags(parser: argparse.ArgumentParser | None = None) -> frozenset[str]:
    """Names of the flags that take a boolean (the only ones TensorFlow's parser allows bare)."""
    parser = parser or build_parser()
    return frozenset(action.dest for action in parser._actions if action.type is _bool_flag)


def flag_names(parser: argparse.ArgumentParser | None = None) -> frozenset[str]:
    """Every ``--name`` this server's command line knows (real-binary and our own)."""
    parser = parser or build_parser()
    return frozenset(action.dest for action in parser._actions if action.option_strings and action.dest != "help")


def build_parser(prog: str = DEFAULT_PROG) -> argparse.ArgumentParser:
    """The parser; a project launching the server under its own command passes that as ``prog``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="TensorFlow-Serving-compatible server (REST + gRPC, tensorflow_model_server's flags).",
    )
    _add_listener_flags(p)
    _add_model_flags(p)
    _add_tensorflow_flags(p)
    _add_limit_flags(p)
    for name, kind in IGNORED_REAL_FLAGS.items():
        if kind is bool:
            _add_bool(p, name, None, "accepted for compatibility, ignored")
        else:
            p.add_argument(f"--{name}", type=kind, default=None, help="accepted for compatibility, ignored")
    return p


def _add_listener_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port (default 8500; 0 switches it off)")
    p.add_argument(
        "--rest_api_port", type=int, default=DEFAULT_REST_PORT, help="REST port (default 9000; 0 switches it off)"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (ours); 0.0.0.0 opens it to the network")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000)
    p.add_argument(
        "--rest_api_num_threads",
        type=int,
        default=None,
        help="threads running model calls without batching (default: max(4, cores))",
    )
    p.add_argument(
        "--grpc_max_threads",
        type=int,
        default=None,
        help="gRPC handler threads (default: 4 x cores, as tensorflow_model_server)",
    )
    p.add_argument(
        "--grpc_channel_arguments", default="", help="comma-separated key=value gRPC server channel arguments"
    )
    p.add_argument(
        "--monitoring_config_file",
        default=None,
        help="text-format MonitoringConfig (prometheus_config { enable: true path: ... })",
    )
    p.add_argument(
        "--http_stack",
        choices=("auto", "asyncio"),
        default="auto",
        help="auto: uvloop + httptools when installed; asyncio: the stdlib loop + h11 (ours)",
    )
    p.add_argument("--log_level", default="INFO")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument(
        "--model_base_path",
        default=None,
        help="folder of numeric version dirs (default $TF_SERVING_COMPAT_MODEL_BASE_PATH or "
        "./model_training/saved_model/my_model)",
    )
    p.add_argument("--model_config_file", default=None, help="text-format ModelServerConfig (overrides name/path)")
    p.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="re-read --model_config_file this often (0: read once)",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="re-scan period for new versions; <= 0 scans once at start",
    )
    _add_bool(p, "enable_batching", False, "dynamic batching")
    p.add_argument("--batching_parameters_file", default=None, help="text-format BatchingParameters")
    _add_bool(p, "enable_model_warmup", True, "replay assets.extra/tf_serving_warmup_requests before serving")
    p.add_argument("--num_request_iterations_for_warmup", type=int, default=1)


def _add_tensorflow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    p.add_argument(
        "--tensorflow_session_config_file",
        default=None,
        help="text-format ConfigProto: thread pools and graph_options.rewrite_options toggles",
    )
    p.add_argument(
        "--mixed_precision_rewrite",
        choices=("auto", "on", "off"),
        default="auto",
        help="Grappler auto-mixed-precision for this host (ours; see docs/serving.md)",
    )


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max_body_bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="413 (REST) / RESOURCE_EXHAUSTED (gRPC) above this (default 64 MiB)",
    )
    p.add_argument(
        "--max_image_pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse images whose header announces more pixels (default 12 MP: <= 64 MiB extra memory)",
    )
    p.add_argument(
        "--image_decode_pixels",
        type=int,
        default=DEFAULT_DECODE_PIXELS,
        help="bigger images are decoded small by the server and reach the graph shrunk to this",
    )
    p.add_argument("--max_instances", type=int, default=1024, help="max batch size of one request")
    p.add_argument(
        "--max_execution_batch_size",
        type=int,
        default=0,
        help="images per model call (ours; 0: the memory budget over the memory per image measured at "
        "load; a batching file's max_execution_batch_size with enable_large_batch_splitting also sets it)",
    )
    p.add_argument(
        "--execution_memory_mb",
        type=int,
        default=DEFAULT_EXECUTION_MEMORY_BYTES // 2**20,
        help="peak memory one model call may add, which sizes its execution batch (ours; default 256)",
    )
    p.add_argument(
        "--max_inflight_images",
        type=int,
        default=2048,
        help="images admitted and not yet answered, all requests together; beyond: 503/UNAVAILABLE "
        "(ours; default 2048, at least --max_instances)",
    )


# Flags whose ServerOptions field has another name; every other implemented flag keeps its name.
_RENAMED = {
    "rest_api_num_threads": "model_threads",
    "tensorflow_intra_op_parallelism": "intra_op_threads",
    "tensorflow_inter_op_parallelism": "inter_op_threads",
    "tensorflow_session_config_file": "session_config_file",
}
_NOT_OPTIONS = frozenset({"log_level", *IGNORED_REAL_FLAGS})


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """The ServerOptions the parsed flags describe (the command line's only translation)."""
    settings = {_RENAMED.get(name, name): value for name, value in vars(args).items() if name not in _NOT_OPTIONS}
    return ServerOptions(**settings)


def warn_ignored_flags(args: argparse.Namespace) -> list[str]:
    """One warning per real-binary flag that was given but has no effect here."""
    given = [name for name in IGNORED_REAL_FLAGS if getattr(args, name) is not None]
    for name in given:
        log.warning(
            "--%s=%s is a tensorflow_model_server flag this server accepts and ignores", name, getattr(args, name)
        )
    return given
