"""CLI with tensorflow_model_server's flags, and ``build_app`` for tests and embedding.

``main`` decides the mixed-precision rewrite, loads the models (blocking, warmup
included, like the real server), logs what is served, starts gRPC on ``--port``
and runs uvicorn (REST) on ``--rest_api_port``. Every flag of the real binary is
accepted: the implemented ones act, the others warn once and are ignored.
SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, then gRPC,
the pollers, batcher and model threads stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .app import ExtraRoute, ServeOptions, ServingApp
from .execution import DEFAULT_EXECUTION_MEMORY_BYTES
from .images import DEFAULT_DECODE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS, bound_heap_retention
from .versions import ModelRegistry, ModelSpecConfig, VersionPolicy, parse_model_config_file, version_loader

log = logging.getLogger("tf_serving_compat")

DEFAULT_GRPC_PORT = 8500  # TF Serving's default; --port=0 switches gRPC off
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

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
OWN_FLAGS = ("host", "max_body_bytes", "max_image_pixels", "image_decode_pixels", "max_instances", "log_level",
             "mixed_precision_rewrite", "http_stack", "max_execution_batch_size", "execution_memory_mb",
             "max_inflight_images")


def default_model_base_path() -> Path:
    """``$TF_SERVING_COMPAT_MODEL_BASE_PATH`` or ``./model_training/saved_model/my_model``."""
    return Path(os.environ.get("TF_SERVING_COMPAT_MODEL_BASE_PATH", "model_training/saved_model/my_model")).resolve()


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vinted serve",
        description="TensorFlow-Serving-compatible server (REST + gRPC, tensorflow_model_server's flags).",
    )
    p.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port (default 8500; 0 switches it off)")
    p.add_argument("--rest_api_port", type=int, default=9000, help="REST port (default 9000; 0 switches it off)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (ours); 0.0.0.0 opens it to the network")
    p.add_argument("--model_name", default="my_model")
    p.add_argument("--model_base_path", default=None,
                   help="folder of numeric version dirs (default <project>/model_training/saved_model/my_model)")
    p.add_argument("--model_config_file", default=None, help="text-format ModelServerConfig (overrides name/path)")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                   help="re-read --model_config_file this often (0: read once)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="re-scan period for new versions; <= 0 scans once at start")
    _add_bool(p, "enable_batching", False, "dynamic batching")
    p.add_argument("--batching_parameters_file", default=None, help="text-format BatchingParameters")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000)
    p.add_argument("--rest_api_num_threads", type=int, default=None,
                   help="threads running model calls without batching (default: max(4, cores))")
    p.add_argument("--grpc_max_threads", type=int, default=None,
                   help="gRPC handler threads (default: 4 x cores, as tensorflow_model_server)")
    p.add_argument("--grpc_channel_arguments", default="",
                   help="comma-separated key=value gRPC server channel arguments")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    p.add_argument("--tensorflow_session_config_file", default=None,
                   help="text-format ConfigProto: thread pools and graph_options.rewrite_options toggles")
    _add_bool(p, "enable_model_warmup", True, "replay assets.extra/tf_serving_warmup_requests before serving")
    p.add_argument("--num_request_iterations_for_warmup", type=int, default=1)
    p.add_argument("--monitoring_config_file", default=None,
                   help="text-format MonitoringConfig (prometheus_config { enable: true path: ... })")
    p.add_argument("--mixed_precision_rewrite", choices=("auto", "on", "off"), default="auto",
                   help="Grappler auto-mixed-precision for this host (ours; see docs/serving.md)")
    p.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="413 (REST) / RESOURCE_EXHAUSTED (gRPC) above this (default 64 MiB)")
    p.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="refuse images whose header announces more pixels (default 12 MP: <= 64 MiB extra memory)")
    p.add_argument("--image_decode_pixels", type=int, default=DEFAULT_DECODE_PIXELS,
                   help="bigger images are decoded small by the server and reach the graph shrunk to this")
    p.add_argument("--max_instances", type=int, default=1024, help="max batch size of one request")
    p.add_argument("--max_execution_batch_size", type=int, default=0,
                   help="images per model call (ours; 0: the memory budget over the memory per image measured at "
                        "load; a batching file's max_execution_batch_size with enable_large_batch_splitting also sets it)")
    p.add_argument("--execution_memory_mb", type=int, default=DEFAULT_EXECUTION_MEMORY_BYTES // 2**20,
                   help="peak memory one model call may add, which sizes its execution batch (ours; default 256)")
    p.add_argument("--max_inflight_images", type=int, default=2048,
                   help="images admitted and not yet answered, all requests together; beyond: 503/UNAVAILABLE "
                        "(ours; default 2048, at least --max_instances)")
    p.add_argument("--http_stack", choices=("auto", "asyncio"), default="auto",
                   help="auto: uvloop + httptools when installed; asyncio: the stdlib loop + h11 (ours)")
    p.add_argument("--log_level", default="INFO")
    for name, kind in IGNORED_REAL_FLAGS.items():
        if kind is bool:
            _add_bool(p, name, None, "accepted for compatibility, ignored")
        else:
            p.add_argument(f"--{name}", type=kind, default=None, help="accepted for compatibility, ignored")
    return p


# ---------------------------------------------------------------- session config and mixed precision


@dataclass(frozen=True)
class SessionSettings:
    """What we take from ``--tensorflow_session_config_file``."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    bf16_toggle: str = "DEFAULT"  # graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16
    fp16_toggle: str = "DEFAULT"  # graph_options.rewrite_options.auto_mixed_precision
    source: str = ""


def parse_session_config(path: str | os.PathLike) -> SessionSettings:
    """Parse a text ``ConfigProto`` as the real binary does (invalid file: ValueError)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    message = config_pb2.ConfigProto()
    try:
        text_format.Parse(Path(path).read_text(), message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid protobuf file: '{path}': {exc}") from None
    rewrite = message.graph_options.rewrite_options
    toggle = rewriter_config_pb2.RewriterConfig.Toggle.Name
    return SessionSettings(message.intra_op_parallelism_threads, message.inter_op_parallelism_threads,
                           toggle(rewrite.auto_mixed_precision_onednn_bfloat16),
                           toggle(rewrite.auto_mixed_precision), str(path))


_TOGGLE_ON = ("ON", "AGGRESSIVE", "EXPERIMENTAL_MLIR", "EXPERIMENTAL_BOTH")


def rewrite_decision(request: str = "auto", session: SessionSettings | None = None, **detect: Any):
    """Our ``--mixed_precision_rewrite`` decision, overridden by explicit session-config toggles.

    The real binary applies the ConfigProto's rewrite toggles as written; we do the same: ON
    forces that pass, OFF switches it off, DEFAULT leaves our host-aware decision.
    ``detect`` (gpus, flags, environ) goes to ``host.decide_rewrite`` (tests inject them).
    """
    from .host import RewriteDecision, decide_rewrite

    if session is not None:
        where = Path(session.source).name or "session config"
        if session.bf16_toggle in _TOGGLE_ON:
            return RewriteDecision("bf16", f"{where}: auto_mixed_precision_onednn_bfloat16 {session.bf16_toggle}")
        if session.fp16_toggle in _TOGGLE_ON:
            return RewriteDecision("fp16", f"{where}: auto_mixed_precision {session.fp16_toggle}")
    decision = decide_rewrite(request, **detect)
    if session is not None:
        where = Path(session.source).name or "session config"
        switched_off = {"bf16": session.bf16_toggle == "OFF", "fp16": session.fp16_toggle == "OFF"}
        if switched_off.get(decision.mode):
            return RewriteDecision("off", f"{where} switches {decision.grappler_option} OFF")
    return decision


# ---------------------------------------------------------------- building the app


def build_app(
    model_name: str = "my_model",
    model_base_path: str | os.PathLike | None = None,
    model_config_file: str | os.PathLike | None = None,
    file_system_poll_wait_seconds: float = 1.0,
    enable_batching: bool = False,
    batching_parameters_file: str | os.PathLike | None = None,
    batching_parameters=None,
    rest_api_timeout_in_ms: int = 30000,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    image_decode_pixels: int = DEFAULT_DECODE_PIXELS,
    max_instances: int = 1024,
    model_threads: int | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    extra_routes: list[ExtraRoute] | tuple = (),
    enable_model_warmup: bool = True,
    num_request_iterations_for_warmup: int = 1,
    mixed_precision_rewrite: str | None = None,
    session_config_file: str | os.PathLike | None = None,
    monitoring_config_file: str | os.PathLike | None = None,
    observers: list | tuple = (),
    max_execution_batch_size: int = 0,
    execution_memory_mb: int = DEFAULT_EXECUTION_MEMORY_BYTES // 2**20,
    max_inflight_images: int = 2048,
) -> ServingApp:
    """Decide/apply the rewrite, load the models (first scan, blocking) and return the ServingApp.

    ``mixed_precision_rewrite=None`` (tests, embedding) leaves TensorFlow's optimizer options alone.
    ``.app`` is the ASGI app; ``.rewrite`` the decision (None when left alone).
    """
    from PIL import Image

    from .batching import Batcher, load_batching_parameters
    from .monitoring import Metrics, load_monitoring_config

    session = parse_session_config(session_config_file) if session_config_file else None
    if session is not None:
        intra_op_threads = intra_op_threads or session.intra_op_threads
        inter_op_threads = inter_op_threads or session.inter_op_threads
    _configure_tensorflow(intra_op_threads, inter_op_threads)
    bound_heap_retention()
    decision = None
    if mixed_precision_rewrite is not None or session is not None:
        from .host import apply_rewrite

        decision = rewrite_decision(mixed_precision_rewrite or "auto", session)
        apply_rewrite(decision)  # before any SavedModel is loaded: Grappler rewrites at load/trace time
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if model_config_file is not None:
        configs = parse_model_config_file(model_config_file)
    else:
        base = Path(model_base_path) if model_base_path is not None else default_model_base_path()
        configs = [ModelSpecConfig(model_name, base, VersionPolicy())]
    metrics = None
    if monitoring_config_file is not None:
        prometheus = load_monitoring_config(monitoring_config_file)
        if prometheus.enable:
            metrics = Metrics(prometheus.path)
    loader = version_loader(enable_model_warmup, num_request_iterations_for_warmup)
    registry = ModelRegistry(configs, poll_wait_seconds=file_system_poll_wait_seconds, loader=loader,
                             on_state=metrics.observe_state if metrics else None)
    registry.poll_all()
    batcher = None
    if enable_batching:
        params = batching_parameters or load_batching_parameters(batching_parameters_file)
        batcher = Batcher(params, metrics=metrics)
        if params.enable_large_batch_splitting and params.max_execution_batch_size and not max_execution_batch_size:
            max_execution_batch_size = params.max_execution_batch_size
    options = ServeOptions(
        default_model=configs[0].name,
        timeout_s=rest_api_timeout_in_ms / 1000.0,
        max_body_bytes=max_body_bytes,
        max_image_pixels=max_image_pixels,
        image_decode_pixels=image_decode_pixels,
        max_instances=max_instances,
        model_threads=model_threads or max(4, os.cpu_count() or 1),
        max_execution_batch_size=max_execution_batch_size,
        execution_memory_bytes=execution_memory_mb * 2**20,
        max_inflight_images=max_inflight_images,
    )
    serving = ServingApp(registry, options, batcher, extra_routes=extra_routes, metrics=metrics, observers=observers)
    serving.rewrite = decision
    return serving


def _configure_tensorflow(intra: int, inter: int) -> None:
    if not (intra or inter):
        return
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as exc:  # TF runtime already initialised in this process
        log.warning("Could not set TensorFlow thread pools: %s", exc)


def _configure_logging(level: str) -> None:
    root = logging.getLogger("tf_serving_compat")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    access = logging.getLogger("tf_serving_compat.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))  # one JSON object per line
        access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)


def warn_ignored_flags(args: argparse.Namespace) -> list[str]:
    """One warning per real-binary flag that was given but has no effect here."""
    given = [name for name in IGNORED_REAL_FLAGS if getattr(args, name) is not None]
    for name in given:
        log.warning("--%s=%s is a tensorflow_model_server flag this server accepts and ignores",
                    name, getattr(args, name))
    return given


class ConfigFilePoller:
    """Re-reads ``--model_config_file`` every N seconds and applies changes (TF Serving's poll)."""

    def __init__(self, path: str | os.PathLike, registry: ModelRegistry, wait_seconds: float):
        self.path = Path(path)
        self.registry = registry
        self.wait_seconds = wait_seconds
        self._last = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-config-poller", daemon=True)

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def start(self) -> None:
        self._thread.start()

    def check_once(self) -> bool:
        """Apply the file if it changed; a bad file is logged and the running config kept."""
        text = self._read()
        if text is None or text == self._last:
            return False
        self._last = text
        try:
            configs = parse_model_config_file(self.path)
        except (OSError, ValueError) as exc:
            log.error("Ignoring changed model config file: %s", exc)
            return False
        self.registry.reconfigure(configs)
        log.info("Applied changed model config file %s: models %s", self.path, sorted(self.registry.models))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.wait_seconds):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything on disk
                log.exception("Model config poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def start_line(serving: ServingApp) -> list[str]:
    """What the log says once models are loaded: versions and the mixed-precision decision."""
    rewrite = f"; {serving.rewrite.describe()}" if serving.rewrite is not None else ""
    lines = []
    for name, manager in serving.registry.models.items():
        versions = manager.loaded_versions()
        if versions:
            lines.append(f"Serving model {name} versions {versions} from {manager.config.base_path}{rewrite}")
            for version in versions:
                loaded = manager.resolve(version)
                measured = ("" if loaded.bytes_per_item is None
                            else f" ({loaded.bytes_per_item / 2**20:.1f} MiB per image measured at load)")
                lines.append(f"Model {name} version {version}: at most {serving.execution_batch_size(loaded)} "
                             f"images per model call{measured}; at most {serving.options.max_inflight_images} "
                             "images in flight")
        else:
            lines.append(f"Model {name} has no loadable version under {manager.config.base_path} yet; polling{rewrite}")
    return lines


def app_from_args(args: argparse.Namespace, extra_routes: list[ExtraRoute] | tuple = (),
                  observers: list | tuple = ()) -> ServingApp:
    """``build_app`` from parsed command-line flags (what ``main`` serves)."""
    return build_app(
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels,
        image_decode_pixels=args.image_decode_pixels,
        max_instances=args.max_instances,
        max_execution_batch_size=args.max_execution_batch_size,
        execution_memory_mb=args.execution_memory_mb,
        max_inflight_images=args.max_inflight_images,
        model_threads=args.rest_api_num_threads,
        intra_op_threads=args.tensorflow_intra_op_parallelism,
        inter_op_threads=args.tensorflow_inter_op_parallelism,
        extra_routes=extra_routes,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        mixed_precision_rewrite=args.mixed_precision_rewrite,
        session_config_file=args.tensorflow_session_config_file,
        monitoring_config_file=args.monitoring_config_file,
        observers=observers,
    )


def main(argv: list[str] | None = None, extra_routes: list[ExtraRoute] | tuple = (),
         observers: list | tuple = ()) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code.

    ``extra_routes`` lets a project add routes outside /v1 (see ``app.ExtraRoute``), ``observers``
    watch predictions (see ``observers.PredictObserver``).
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warn_ignored_flags(args)
    if args.port and args.port == args.rest_api_port:
        log.error("--rest_api_port cannot be same as --port")
        return 2
    try:
        serving = app_from_args(args, extra_routes, observers)
    except (OSError, ValueError) as exc:
        log.error("Cannot start: %s", exc)
        return 2
    for line in start_line(serving):
        log.info("%s", line)
    if serving.batcher is not None:
        log.info("Batching enabled: %s", serving.batcher.params)
    config_poller = None
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        config_poller = ConfigFilePoller(args.model_config_file, serving.registry,
                                         args.model_config_file_poll_wait_seconds)
        config_poller.start()
    grpc_server = None
    if args.port:
        from .grpc_service import start_grpc_server

        try:
            grpc_server = start_grpc_server(serving, args.host, args.port, max_threads=args.grpc_max_threads,
                                            channel_arguments=args.grpc_channel_arguments)
        except (RuntimeError, ValueError) as exc:
            log.error("Cannot start gRPC on %s:%d: %s", args.host, args.port, exc)
            serving.close()
            return 2
        log.info("Running gRPC ModelServer at %s:%d ...", args.host, args.port)
    received: list[int] = []
    try:
        if args.rest_api_port:
            _run_rest(serving, args, received)  # the app's lifespan starts the version poller
        else:
            serving.registry.start()
            _wait_for_signal(received)
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=10).wait(15)
        if config_poller is not None:
            config_poller.stop()
        serving.close()
    log.info("Server stopped%s", f" (signal {received[0]})" if received else "")
    return 0


def _run_rest(serving: ServingApp, args: argparse.Namespace, received: list[int]) -> None:
    import uvicorn

    log.info("REST API at http://%s:%d/v1/models/%s", args.host, args.rest_api_port, serving.options.default_model)
    # uvicorn drains connections on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found; a recording handler lets us stop gRPC/poller/batcher and exit 0 instead of dying.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        from .http_protocols import protocol_class

        stack = {"loop": "asyncio" if args.http_stack == "asyncio" else "auto", "http": protocol_class(args.http_stack)}
        uvicorn.run(serving.app, host=args.host, port=args.rest_api_port, access_log=False,
                    log_level="warning", timeout_graceful_shutdown=30, lifespan="on", **stack)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_signal(received: list[int]) -> None:
    """gRPC only (``--rest_api_port=0``): run the version poller until SIGTERM/SIGINT."""
    stop = threading.Event()

    def handler(signum, frame):
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())
