"""Every setting of one server, in one typed object (``ServerOptions``).

The command line builds it once (``cli.options_from_args``); tests and projects build it
directly (``ServerOptions(model_base_path=..., enable_batching=True)``) and hand it to
``factory.build_app``. Defaults are tensorflow_model_server's where it has the flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .batching import BatchingParameters
from .execution import DEFAULT_EXECUTION_MEMORY_BYTES, ExecutionLimits
from .images import DEFAULT_DECODE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS

DEFAULT_GRPC_PORT = 8500  # TF Serving's default; port=0 switches gRPC off
DEFAULT_REST_PORT = 9000
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MODEL_NAME = "my_model"

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ServerOptions:
    """One server instance's settings; the flag of the same name documents each (``cli.py``)."""

    # models and versions
    model_name: str = DEFAULT_MODEL_NAME
    model_base_path: PathLike | None = None  # None: $TF_SERVING_COMPAT_MODEL_BASE_PATH or the default
    model_config_file: PathLike | None = None
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: float = 1.0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    # batching
    enable_batching: bool = False
    batching_parameters_file: PathLike | None = None
    batching_parameters: BatchingParameters | None = None  # takes precedence over the file
    # TensorFlow
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    session_config_file: PathLike | None = None
    mixed_precision_rewrite: str | None = None  # None (tests, embedding) leaves TensorFlow's options alone
    # limits of one request and of the process
    rest_api_timeout_in_ms: int = 30000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    image_decode_pixels: int = DEFAULT_DECODE_PIXELS
    max_instances: int = 1024
    model_threads: int | None = None  # None: max(4, cores)
    max_execution_batch_size: int = 0  # 0: from the model's measured memory per image and the budget
    execution_memory_mb: int = DEFAULT_EXECUTION_MEMORY_BYTES // 2**20
    max_inflight_images: int = 2048
    # monitoring
    monitoring_config_file: PathLike | None = None
    # the process: listeners
    host: str = "127.0.0.1"
    port: int = DEFAULT_GRPC_PORT
    rest_api_port: int = DEFAULT_REST_PORT
    grpc_max_threads: int | None = None
    grpc_channel_arguments: str = ""
    http_stack: str = "auto"

    def __post_init__(self) -> None:
        if self.max_inflight_images < self.max_instances:
            raise ValueError(
                f"max_inflight_images ({self.max_inflight_images}) must be at least max_instances "
                f"({self.max_instances}), or a legal request could never be admitted"
            )

    @property
    def timeout_s(self) -> float:
        return self.rest_api_timeout_in_ms / 1000.0

    @property
    def worker_threads(self) -> int:
        """Threads running model calls without batching."""
        return self.model_threads or max(4, os.cpu_count() or 1)

    @property
    def execution(self) -> ExecutionLimits:
        return ExecutionLimits(
            self.max_execution_batch_size or None, self.execution_memory_mb * 2**20, ceiling=self.max_instances
        )
