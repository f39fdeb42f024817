"""Running the server as a process: logging, gRPC and REST listeners, the config poller, signals.

``main`` decides the mixed-precision rewrite, loads the models (blocking, warmup included, like
the real server), logs what is served, starts gRPC on ``--port`` and runs uvicorn (REST) on
``--rest_api_port``. SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, then
gRPC, the pollers, batcher and model threads stop.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn

from .adapter import ModelAdapter
from .app import ServingApp
from .cli import DEFAULT_PROG, build_parser, options_from_args, warn_ignored_flags
from .factory import build_app, start_line
from .grpc_service import start_grpc_server
from .http_protocols import protocol_class
from .options import ServerOptions
from .poller import ConfigFilePoller

log = logging.getLogger("tf_serving_compat")


def main(argv: list[str] | None = None, *, adapter: ModelAdapter | None = None, prog: str = DEFAULT_PROG) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code.

    ``adapter`` is the project's extension (routes, observers, per-version metadata: ``adapter.py``);
    ``prog`` names the command in ``--help``.
    """
    args = build_parser(prog).parse_args(argv)
    _configure_logging(args.log_level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warn_ignored_flags(args)
    if args.port and args.port == args.rest_api_port:
        log.error("--rest_api_port cannot be same as --port")
        return 2
    try:
        options = options_from_args(args)
        serving = build_app(options, adapter=adapter)
    except (OSError, ValueError) as exc:
        log.error("Cannot start: %s", exc)
        return 2
    for line in start_line(serving):
        log.info("%s", line)
    if serving.batcher is not None:
        log.info("Batching enabled: %s", serving.batcher.params)
    return serve(serving, options)


def serve(serving: ServingApp, options: ServerOptions) -> int:
    """Serve a built app on the options' listeners until a signal; closes it; returns the exit code."""
    config_poller = None
    if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
        config_poller = ConfigFilePoller(
            options.model_config_file, serving.registry, options.model_config_file_poll_wait_seconds
        )
        config_poller.start()
    grpc_server = None
    if options.port:
        try:
            grpc_server = start_grpc_server(
                serving,
                options.host,
                options.port,
                max_threads=options.grpc_max_threads,
                channel_arguments=options.grpc_channel_arguments,
            )
        except (RuntimeError, ValueError) as exc:
            log.error("Cannot start gRPC on %s:%d: %s", options.host, options.port, exc)
            serving.close()
            return 2
        log.info("Running gRPC ModelServer at %s:%d ...", options.host, options.port)
    received: list[int] = []
    try:
        if options.rest_api_port:
            _run_rest(serving, options, received)  # the app's lifespan starts the version poller
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


def _run_rest(serving: ServingApp, options: ServerOptions, received: list[int]) -> None:
    log.info("REST API at http://%s:%d/v1/models/%s", options.host, options.rest_api_port, serving.default_model)
    # uvicorn drains connections on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found; a recording handler lets us stop gRPC/poller/batcher and exit 0 instead of dying.
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {
            sig: signal.signal(sig, lambda signum, frame: received.append(signum))
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
    try:
        loop = "asyncio" if options.http_stack == "asyncio" else "auto"
        uvicorn.run(
            serving.app,
            host=options.host,
            port=options.rest_api_port,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=30,
            lifespan="on",
            loop=loop,
            http=protocol_class(options.http_stack),
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_signal(received: list[int]) -> None:
    """gRPC only (``--rest_api_port=0``): run the version poller until SIGTERM/SIGINT."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
