"""A TensorFlow-Serving-compatible model server (REST + gRPC) in Python, for SavedModels.

Modules: ``options`` (``ServerOptions``: every setting), ``cli`` (tensorflow_model_server's flags
-> ServerOptions), ``factory`` (``build_app``), ``adapter`` (``ModelAdapter``: what a project plugs
in), ``app`` (Starlette routes), ``grpc_service`` (PredictionService + ModelService), ``versions``
(version discovery, policies, warmup, hot swap), ``batching`` (dynamic batcher), ``tensor_json``
(JSON <-> tensors, TF Serving's float formatting), ``monitoring`` (Prometheus), ``observers``
(prediction watchers), ``session_config`` (ConfigProto and the rewrite it leaves), ``poller``
(model config file), ``process`` (``main``: listeners and signals), ``errors`` (canonical codes).
Self-contained: it imports no project package; hardware detection comes from ``hostinfo``.
Importing this package imports nothing heavy: TensorFlow is loaded only when a server is built.
"""
