"""A TensorFlow-Serving-compatible model server (REST + gRPC) in Python, for SavedModels.

Modules: ``tensor_json`` (JSON <-> tensors, TF Serving's float formatting),
``versions`` (version discovery, policies, labels, warmup, hot swap), ``batching``
(dynamic batcher), ``app`` (Starlette routes, ``ExtraRoute`` hook), ``grpc_service``
(PredictionService + ModelService), ``monitoring`` (Prometheus), ``host`` (mixed-precision
rewrite for this host), ``server`` (CLI ``main``). Self-contained: it imports no project
package; projects plug routes in with ``build_app(extra_routes=...)`` / ``main(argv, extra_routes=...)``.
Importing this package imports nothing heavy: TensorFlow is loaded only when a server is built.
"""

from __future__ import annotations

__all__ = ["main", "build_app"]


def main(argv: list[str] | None = None, extra_routes=()) -> int:
    """Run the server (see ``server.main``)."""
    from .server import main as _main

    return _main(argv, extra_routes=extra_routes)


def build_app(*args, **kwargs):
    """Build the ServingApp (see ``server.build_app``)."""
    from .server import build_app as _build_app

    return _build_app(*args, **kwargs)
