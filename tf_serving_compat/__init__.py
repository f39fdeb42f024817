"""TensorFlow-Serving-compatible REST server for the exported SavedModels.

Modules: ``tensor_json`` (JSON <-> tensors, TF Serving's float formatting),
``versions`` (version discovery, policies, labels, hot swap), ``batching``
(dynamic batcher), ``app`` (Starlette routes), ``server`` (CLI ``main``).
Importing this package imports nothing heavy: TensorFlow is loaded only when a
server is built, so ``vinted --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["main", "build_app", "find_real_server"]


def main(argv: list[str] | None = None) -> int:
    """Start the REST server (see ``server.main``)."""
    from .server import main as _main

    return _main(argv)


def build_app(*args, **kwargs):
    """Build the Starlette app (see ``server.build_app``)."""
    from .server import build_app as _build_app

    return _build_app(*args, **kwargs)


def find_real_server() -> str | None:
    """Path of the real ``tensorflow_model_server`` binary, if installed."""
    from .server import find_real_server as _find

    return _find()
