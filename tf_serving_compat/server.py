"""CLI with tensorflow_model_server's flag names, and ``build_app`` for tests and embedding.

``main`` loads the models (blocking, like the real server), logs what is served,
then runs uvicorn on ``--rest_api_port``. SIGTERM/SIGINT: uvicorn stops accepting,
finishes in-flight requests, then the poller, batcher and model threads stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path

from .app import ServeOptions, ServingApp
from .versions import ModelRegistry, ModelSpecConfig, VersionPolicy, parse_model_config_file

log = logging.getLogger("tf_serving_compat")


def find_real_server() -> str | None:
    """The real ``tensorflow_model_server`` binary, which callers should prefer when present."""
    return shutil.which("tensorflow_model_server")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vinted serve",
        description="TensorFlow-Serving-compatible REST server (same flags as tensorflow_model_server).",
    )
    p.add_argument("--rest_api_port", type=int, default=9000, help="REST port (default 9000)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 opens it to the network")
    p.add_argument("--port", type=int, default=None, help="gRPC port: accepted for compatibility, not served")
    p.add_argument("--model_name", default="my_model")
    p.add_argument("--model_base_path", default=None,
                   help="folder of numeric version dirs (default <project>/model_training/saved_model/my_model)")
    p.add_argument("--model_config_file", default=None, help="text-format ModelServerConfig (overrides name/path)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="re-scan period for new versions; <= 0 scans once at start")
    p.add_argument("--enable_batching", type=_bool_flag, nargs="?", const=True, default=False)
    p.add_argument("--batching_parameters_file", default=None, help="text-format BatchingParameters")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000)
    p.add_argument("--rest_api_num_threads", type=int, default=None,
                   help="threads running model calls without batching (default: max(4, cores))")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
    p.add_argument("--max_body_bytes", type=int, default=64 * 1024 * 1024, help="413 above this (default 64 MiB)")
    p.add_argument("--max_image_pixels", type=int, default=40_000_000,
                   help="refuse images whose header announces more pixels (default 40 MP)")
    p.add_argument("--max_instances", type=int, default=1024, help="max batch size of one request")
    p.add_argument("--log_level", default="INFO")
    return p


def build_app(
    model_name: str = "my_model",
    model_base_path: str | os.PathLike | None = None,
    model_config_file: str | os.PathLike | None = None,
    file_system_poll_wait_seconds: float = 1.0,
    enable_batching: bool = False,
    batching_parameters_file: str | os.PathLike | None = None,
    batching_parameters=None,
    rest_api_timeout_in_ms: int = 30000,
    max_body_bytes: int = 64 * 1024 * 1024,
    max_image_pixels: int = 40_000_000,
    max_instances: int = 1024,
    model_threads: int | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
) -> ServingApp:
    """Load the models (first scan, blocking) and return the ServingApp; ``.app`` is the ASGI app."""
    from PIL import Image

    from .batching import Batcher, load_batching_parameters

    _configure_tensorflow(intra_op_threads, inter_op_threads)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if model_config_file is not None:
        configs = parse_model_config_file(model_config_file)
    else:
        base = Path(model_base_path) if model_base_path is not None else default_model_base_path()
        configs = [ModelSpecConfig(model_name, base, VersionPolicy())]
    registry = ModelRegistry(configs, poll_wait_seconds=file_system_poll_wait_seconds)
    registry.poll_all()
    batcher = None
    if enable_batching:
        params = batching_parameters or load_batching_parameters(batching_parameters_file)
        batcher = Batcher(params)
    options = ServeOptions(
        default_model=configs[0].name,
        timeout_s=rest_api_timeout_in_ms / 1000.0,
        max_body_bytes=max_body_bytes,
        max_image_pixels=max_image_pixels,
        max_instances=max_instances,
        model_threads=model_threads or max(4, os.cpu_count() or 1),
    )
    return ServingApp(registry, options, batcher)


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


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.port is not None:
        log.warning("--port=%d (gRPC) is accepted but this server only speaks REST", args.port)
    try:
        serving = build_app(
            model_name=args.model_name,
            model_base_path=args.model_base_path,
            model_config_file=args.model_config_file,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            enable_batching=args.enable_batching,
            batching_parameters_file=args.batching_parameters_file,
            rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
            max_body_bytes=args.max_body_bytes,
            max_image_pixels=args.max_image_pixels,
            max_instances=args.max_instances,
            model_threads=args.rest_api_num_threads,
            intra_op_threads=args.tensorflow_intra_op_parallelism,
            inter_op_threads=args.tensorflow_inter_op_parallelism,
        )
    except (OSError, ValueError) as exc:
        log.error("Cannot start: %s", exc)
        return 2
    for name, manager in serving.registry.models.items():
        versions = manager.loaded_versions()
        if versions:
            log.info("Serving model %s versions %s from %s", name, versions, manager.config.base_path)
        else:
            log.warning("Model %s has no loadable version under %s yet; polling", name, manager.config.base_path)
    if serving.batcher is not None:
        log.info("Batching enabled: %s", serving.batcher.params)
    import uvicorn

    log.info("REST API at http://%s:%d/v1/models/%s", args.host, args.rest_api_port, serving.options.default_model)
    # uvicorn drains connections on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found; a recording handler lets us stop the poller/batcher and exit 0 instead of dying.
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(serving.app, host=args.host, port=args.rest_api_port, access_log=False,
                    log_level="warning", timeout_graceful_shutdown=30, lifespan="on")
    finally:
        serving.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("Server stopped%s", f" (signal {received[0]})" if received else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
