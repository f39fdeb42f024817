"""``build_app``: from ``ServerOptions`` (and a project's ``ModelAdapter``) to a loaded ``ServingApp``.

Order matters: the thread pools and the mixed-precision rewrite are set before any SavedModel is
loaded (Grappler rewrites at load/trace time), then the first scan loads the models, warm-up included.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import warnings
from pathlib import Path

from PIL import Image

from hostinfo import RewriteDecision, apply_rewrite

from .adapter import ModelAdapter
from .app import ServingApp
from .batching import Batcher, load_batching_parameters
from .cli import options_from_args
from .images import bound_heap_retention
from .monitoring import Metrics, load_monitoring_config
from .options import ServerOptions
from .session_config import SessionSettings, parse_session_config, rewrite_decision
from .versions import ModelRegistry, ModelSpecConfig, VersionPolicy, parse_model_config_file, version_loader

log = logging.getLogger("tf_serving_compat")


def default_model_base_path() -> Path:
    """``$TF_SERVING_COMPAT_MODEL_BASE_PATH`` or ``./model_training/saved_model/my_model``."""
    return Path(os.environ.get("TF_SERVING_COMPAT_MODEL_BASE_PATH", "model_training/saved_model/my_model")).resolve()


def build_app(options: ServerOptions | None = None, *, adapter: ModelAdapter | None = None) -> ServingApp:
    """Decide/apply the rewrite, load the models (first scan, blocking) and return the ServingApp.

    ``.app`` is the ASGI app; ``.rewrite`` the decision (None when
    ``mixed_precision_rewrite`` is None and no session config is given: TensorFlow's options are left alone).
    """
    options = options or ServerOptions()
    adapter = adapter or ModelAdapter()
    options, decision = _prepare_tensorflow(options)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    configs = _model_configs(options)
    metrics = _metrics(options)
    loader = version_loader(
        options.enable_model_warmup, options.num_request_iterations_for_warmup, adapter.load_metadata
    )
    registry = ModelRegistry(
        configs,
        poll_wait_seconds=options.file_system_poll_wait_seconds,
        loader=loader,
        on_state=metrics.observe_state if metrics else None,
    )
    registry.poll_all()
    batcher = None
    if options.enable_batching:
        params = options.batching_parameters or load_batching_parameters(options.batching_parameters_file)
        batcher = Batcher(params, metrics=metrics)
        if (
            params.enable_large_batch_splitting
            and params.max_execution_batch_size
            and not options.max_execution_batch_size
        ):
            options = dataclasses.replace(options, max_execution_batch_size=params.max_execution_batch_size)
    serving = ServingApp(
        registry, options, default_model=configs[0].name, batcher=batcher, adapter=adapter, metrics=metrics
    )
    serving.rewrite = decision
    return serving


def app_from_args(args: argparse.Namespace, adapter: ModelAdapter | None = None) -> ServingApp:
    """``build_app`` from parsed command-line flags (what ``process.main`` serves)."""
    return build_app(options_from_args(args), adapter=adapter)


def _prepare_tensorflow(options: ServerOptions) -> tuple[ServerOptions, RewriteDecision | None]:
    """Thread pools (flags first, then the session config) and the rewrite, before any model loads."""
    session: SessionSettings | None = None
    if options.session_config_file:
        session = parse_session_config(options.session_config_file)
        options = dataclasses.replace(
            options,
            intra_op_threads=options.intra_op_threads or session.intra_op_threads,
            inter_op_threads=options.inter_op_threads or session.inter_op_threads,
        )
    _configure_tensorflow(options.intra_op_threads, options.inter_op_threads)
    bound_heap_retention()
    decision = None
    if options.mixed_precision_rewrite is not None or session is not None:
        decision = rewrite_decision(options.mixed_precision_rewrite or "auto", session)
        apply_rewrite(decision)  # before any SavedModel is loaded: Grappler rewrites at load/trace time
    return options, decision


def _model_configs(options: ServerOptions) -> list[ModelSpecConfig]:
    if options.model_config_file is not None:
        return parse_model_config_file(options.model_config_file)
    base = Path(options.model_base_path) if options.model_base_path is not None else default_model_base_path()
    return [ModelSpecConfig(options.model_name, base, VersionPolicy())]


def _metrics(options: ServerOptions) -> Metrics | None:
    if options.monitoring_config_file is None:
        return None
    prometheus = load_monitoring_config(options.monitoring_config_file)
    return Metrics(prometheus.path) if prometheus.enable else None


def _configure_tensorflow(intra: int, inter: int) -> None:
    if not (intra or inter):
        return
    # Only when thread pools are asked for: this module is imported by the command line, which
    # must answer --help without loading TensorFlow.
    import tensorflow as tf  # noqa: PLC0415

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as exc:  # TF runtime already initialised in this process
        log.warning("Could not set TensorFlow thread pools: %s", exc)


def start_line(serving: ServingApp) -> list[str]:
    """What the log says once models are loaded: versions and the mixed-precision decision."""
    rewrite = f"; {serving.rewrite.describe()}" if serving.rewrite is not None else ""
    lines = []
    for name, manager in serving.registry.models.items():
        versions = manager.loaded_versions()
        if not versions:
            lines.append(f"Model {name} has no loadable version under {manager.config.base_path} yet; polling{rewrite}")
            continue
        lines.append(f"Serving model {name} versions {versions} from {manager.config.base_path}{rewrite}")
        for version in versions:
            loaded = manager.resolve(version)
            measured = (
                ""
                if loaded.bytes_per_item is None
                else f" ({loaded.bytes_per_item / 2**20:.1f} MiB per image measured at load)"
            )
            lines.append(
                f"Model {name} version {version}: at most {serving.execution_batch_size(loaded)} "
                f"images per model call{measured}; at most {serving.options.max_inflight_images} "
                "images in flight"
            )
    return lines
