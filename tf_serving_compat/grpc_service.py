"""gRPC ``PredictionService`` and ``ModelService`` on ``--port``, with the real tensorflow-serving-api stubs.

Same registry, versions, labels, batcher, limits and canonical error codes as REST: a request
answered ``400 {"error": M}`` over REST is ``INVALID_ARGUMENT`` with details ``M`` here.
Tensors cross the wire as ``TensorProto`` (``tf.make_ndarray`` in, ``tf.make_tensor_proto`` out).
Classify/Regress/MultiInference answer what TF Serving answers for predict-only signatures.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import time
from typing import Any, Literal

import grpc
import numpy as np

from .errors import ServingError, invalid, not_found, unimplemented
from .observers import notify_predict, notify_reject
from .tensor_json import ARRAY_MAX_RANK, DTYPES
from .versions import DEFAULT_SIGNATURE, model_specs_from_proto

log = logging.getLogger("tf_serving_compat")

INT32_MAX = 2**31 - 1
# A TensorProto may announce a shape far larger than its payload (values are repeated to fill it);
# refuse decoding more than this many bytes per request tensor (x the body limit).
DECODED_TENSOR_FACTOR = 4
_STATE_ENUM = {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


def _grpc_code(code: str):

    return getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)


class _Rpc:
    """Maps ServingError to the gRPC status, counts the call in the metrics, never leaks a traceback."""

    def __init__(self, serving: Any, context: Any, api: str, model: str):
        self.serving, self.context, self.api, self.model = serving, context, api, model
        self.started = time.perf_counter()

    def __enter__(self) -> _Rpc:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        code = "OK"
        message = ""
        if exc is not None:
            if isinstance(exc, ServingError):
                code, message = exc.code, exc.message
            elif isinstance(exc, concurrent.futures.TimeoutError):
                code, message = "DEADLINE_EXCEEDED", "Deadline Exceeded"
            else:
                log.exception("Unhandled error in gRPC %s", self.api)
                code, message = "INTERNAL", f"Internal error: {type(exc).__name__}"
        metrics = self.serving.metrics
        if metrics is not None:
            metrics.observe_request(self.api, self.model, code, time.perf_counter() - self.started, "GRPC")
        if exc is not None and self.api == "predict" and self.serving.observers:
            notify_reject(self.serving.observers, self.model, code, message)
        if exc is not None:
            self.context.abort(_grpc_code(code), message)  # raises; gRPC answers the status
        return False


def _model_spec(spec: Any) -> tuple[str, int | None, str | None]:
    if not spec.name:
        raise invalid("Missing model name in request.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value < 0:
            raise invalid(f"Invalid version: {spec.version.value}")
        return spec.name, int(spec.version.value), None
    if choice == "version_label":
        return spec.name, None, spec.version_label or None
    return spec.name, None, None


def _dtype_name(enum_value: int) -> str:
    # TensorFlow loads only when a model is served: importing this module stays light.
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415

    try:
        return types_pb2.DataType.Name(enum_value)
    except ValueError:
        return f"DT_{enum_value}"


def tensor_from_proto(alias: str, proto: Any, want_dtype: str, byte_limit: int) -> np.ndarray:
    """A request TensorProto -> numpy, refusing wrong dtypes and shapes that would explode in memory."""
    # TensorFlow loads only when a model is served: importing this module stays light.
    import tensorflow as tf  # noqa: PLC0415

    got = _dtype_name(proto.dtype)
    if got != want_dtype:
        raise invalid(
            f"input tensor alias: {alias} has dtype {got.removeprefix('DT_').lower()} but the signature "
            f"expects {want_dtype.removeprefix('DT_').lower()}"
        )
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input tensor alias: {alias} has an unknown rank")
    dims = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input tensor alias: {alias} has a negative dimension in {dims}")
    if len(dims) > ARRAY_MAX_RANK:
        raise invalid(
            f"input tensor alias: {alias} has rank {len(dims)} > {ARRAY_MAX_RANK}, the most this server supports"
        )
    elements = 1
    for d in dims:
        elements *= d
    itemsize = 8 if want_dtype == "DT_STRING" else np.dtype(DTYPES.get(want_dtype, (np.float64,))[0]).itemsize
    if elements * itemsize > byte_limit:
        raise invalid(
            f"input tensor alias: {alias} of shape {dims} exceeds the decoded size limit of {byte_limit} bytes"
        )
    try:
        array = tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - malformed TensorProto (content size, values) is the client's
        raise invalid(f"tensor parsing error: {alias}: {str(exc)[:200]}") from None
    if list(array.shape) != dims:
        raise invalid(f"tensor parsing error: {alias}: decoded shape {list(array.shape)} != {dims}")
    return array


class PredictionServicer:
    """``tensorflow.serving.PredictionService``."""

    def __init__(self, serving: Any):
        self.serving = serving

    def _deadline(self, context: Any) -> float:
        remaining = context.time_remaining()
        timeout = self.serving.options.timeout_s
        return timeout if remaining is None else max(0.0, min(timeout, remaining))

    def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        # TensorFlow loads only when a model is served: importing this module stays light.
        import tensorflow as tf  # noqa: PLC0415
        from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

        with _Rpc(self.serving, context, "predict", request.model_spec.name):
            name, version, label = _model_spec(request.model_spec)
            loaded = self.serving.resolve(name, version, label)
            info = loaded.signature(request.model_spec.signature_name)
            if not info.inputs:
                raise invalid(f"Failed to get input map for signature: {info.name}")
            sent, wanted = set(request.inputs), set(info.inputs)
            if sent != wanted:
                raise invalid(
                    f"input size does not match signature: {len(sent)}!={len(wanted)} "
                    f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                    f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                    f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
                )
            limit = DECODED_TENSOR_FACTOR * self.serving.options.max_body_bytes
            inputs = {
                alias: tensor_from_proto(alias, proto, info.inputs[alias].dtype, limit)
                for alias, proto in request.inputs.items()
            }
            for alias in request.output_filter:
                if alias not in info.outputs:
                    raise invalid(
                        f"output tensor alias not found in signature: {alias} Outputs expected to be "
                        f"in the set {{{','.join(sorted(info.outputs))}}}."
                    )
            inputs = self.serving.validate_inputs(loaded, info, inputs)
            outputs = self.serving.submit(loaded, info, inputs).result(self._deadline(context))
            notify_predict(self.serving.observers, loaded, info.name, inputs, outputs)
            wanted_outputs = list(request.output_filter) or sorted(outputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = info.name
            for alias in wanted_outputs:
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
            return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        # TensorFlow loads only when a model is served: importing this module stays light.
        from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: PLC0415

        with _Rpc(self.serving, context, "metadata", request.model_spec.name):
            name, version, label = _model_spec(request.model_spec)
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid(f"Metadata field {field} is not supported")
            loaded = self.serving.resolve(name, version, label)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key in sorted(loaded.signature_defs):
                signature_map.signature_def[key].CopyFrom(loaded.signature_defs[key])
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = loaded.version
            response.metadata["signature_def"].Pack(signature_map)
            return response

    def _check_method(self, spec: Any, verb: str) -> None:
        name, version, label = _model_spec(spec)
        loaded = self.serving.resolve(name, version, label)
        info = loaded.signature(spec.signature_name)
        kind = "classification" if verb == "classify" else "regression"
        expected = f"tensorflow/serving/{verb}"
        if info.method_name != expected:
            raise invalid(f"Expected {kind} signature method_name to be {expected}. Was: {info.method_name}")
        raise unimplemented(f"{verb} signatures are not supported by this server; use Predict")

    def Classify(self, request: Any, context: Any) -> Any:  # noqa: N802
        with _Rpc(self.serving, context, "classify", request.model_spec.name):
            self._check_method(request.model_spec, "classify")

    def Regress(self, request: Any, context: Any) -> Any:  # noqa: N802
        with _Rpc(self.serving, context, "regress", request.model_spec.name):
            self._check_method(request.model_spec, "regress")

    def MultiInference(self, request: Any, context: Any) -> Any:  # noqa: N802
        model = request.tasks[0].model_spec.name if request.tasks else ""
        with _Rpc(self.serving, context, "multi_inference", model):
            if not request.tasks:
                raise invalid("Tasks must be non-empty")
            names = {task.model_spec.name for task in request.tasks}
            if "" in names:
                raise invalid("Found ModelSpec with an empty model name.")
            if len(names) > 1:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            seen = set()
            for task in request.tasks:
                signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
                if signature in seen:
                    raise invalid(f"Duplicate evaluation of signature: {signature}")
                seen.add(signature)
            for task in request.tasks:
                name, version, label = _model_spec(task.model_spec)
                info = self.serving.resolve(name, version, label).signature(task.model_spec.signature_name)
                if info.method_name not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
                    raise invalid(f"Unsupported signature method_name: {info.method_name}")
            raise unimplemented("classify/regress signatures are not supported by this server")


class ModelServicer:
    """``tensorflow.serving.ModelService``: status and config reload."""

    def __init__(self, serving: Any, on_reload: Any = None):
        self.serving = serving
        self.on_reload = on_reload

    def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        # TensorFlow loads only when a model is served: importing this module stays light.
        from tensorflow_serving.apis import get_model_status_pb2  # noqa: PLC0415

        with _Rpc(self.serving, context, "status", request.model_spec.name):
            name, version, label = _model_spec(request.model_spec)
            manager = self.serving.registry.get(name)
            if manager is None:
                raise not_found(f"Could not find any versions of model {name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            for entry in manager.status(version, label):
                status = response.model_version_status.add()
                status.version = int(entry["version"])
                status.state = _STATE_ENUM[entry["state"]]
                status.status.error_code = _ERROR_CODE_ENUM[entry["status"]["error_code"]]
                status.status.error_message = entry["status"]["error_message"]
            return response

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
        # TensorFlow loads only when a model is served: importing this module stays light.
        from tensorflow_serving.apis import model_management_pb2  # noqa: PLC0415

        with _Rpc(self.serving, context, "reload_config", ""):
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid("ServerConfig type not supported.")
            try:
                configs = model_specs_from_proto(request.config, "ReloadConfigRequest")
            except ValueError as exc:
                raise invalid(str(exc)) from None
            self.serving.registry.reconfigure(configs)
            log.info("Reloaded model config over gRPC: models %s", sorted(self.serving.registry.models))
            return model_management_pb2.ReloadConfigResponse()


_ERROR_CODE_ENUM = {
    name: number
    for number, name in enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
}


def parse_channel_arguments(text: str) -> list[tuple[str, Any]]:
    """``--grpc_channel_arguments=k=v,k2=v2`` (ints passed as ints, like TF Serving)."""
    result: list[tuple[str, str | int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, text_value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        value: str | int = text_value
        with contextlib.suppress(ValueError):
            value = int(text_value)
        result.append((key, value))
    return result


class _Malformed:
    """Stands for a request whose bytes did not parse (answered INVALID_ARGUMENT, not INTERNAL)."""

    def __init__(self, error: Exception):
        self.error = error


def _safe_parser(message_class: Any):
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends: the client's bytes
            return _Malformed(exc)

    return parse


def _guarded(method: Any, api: str, serving: Any):
    def handle(request: Any, context: Any) -> Any:
        if isinstance(request, _Malformed):
            with _Rpc(serving, context, api, ""):
                raise invalid(f"Failed to parse request: {str(request.error)[:200]}")
        return method(request, context)

    return handle


def _service_handlers(serving: Any) -> list[Any]:
    """Handlers for both services, with request parsing that maps garbage bytes to INVALID_ARGUMENT.

    (The generated ``add_*_to_server`` would answer INTERNAL "Exception deserializing request!".)
    """
    # TensorFlow loads only when a model is served: importing this module stays light.
    from tensorflow_serving.apis import (  # noqa: PLC0415
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_management_pb2,
        predict_pb2,
        regression_pb2,
    )

    prediction, model = PredictionServicer(serving), ModelServicer(serving)
    tables = {
        "tensorflow.serving.PredictionService": {
            "Predict": (prediction.Predict, predict_pb2.PredictRequest, "predict"),
            "GetModelMetadata": (
                prediction.GetModelMetadata,
                get_model_metadata_pb2.GetModelMetadataRequest,
                "metadata",
            ),
            "Classify": (prediction.Classify, classification_pb2.ClassificationRequest, "classify"),
            "Regress": (prediction.Regress, regression_pb2.RegressionRequest, "regress"),
            "MultiInference": (prediction.MultiInference, inference_pb2.MultiInferenceRequest, "multi_inference"),
        },
        "tensorflow.serving.ModelService": {
            "GetModelStatus": (model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest, "status"),
            "HandleReloadConfigRequest": (
                model.HandleReloadConfigRequest,
                model_management_pb2.ReloadConfigRequest,
                "reload_config",
            ),
        },
    }
    handlers = []
    for service, methods in tables.items():
        rpc_handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                _guarded(method, api, serving),
                request_deserializer=_safe_parser(request_class),
                response_serializer=lambda message: message.SerializeToString(),
            )
            for name, (method, request_class, api) in methods.items()
        }
        handlers.append(grpc.method_handlers_generic_handler(service, rpc_handlers))
    return handlers


def start_grpc_server(
    serving: Any, host: str, port: int, max_threads: int | None = None, channel_arguments: str = ""
) -> Any:
    """Start gRPC on host:port (RuntimeError when the port is taken); ``.bound_port`` is the port."""

    options = [
        ("grpc.max_receive_message_length", min(INT32_MAX, serving.options.max_body_bytes)),
        ("grpc.max_send_message_length", INT32_MAX),
        ("grpc.so_reuseport", 0),
    ]
    options += parse_channel_arguments(channel_arguments)
    # TF Serving's default: 4 threads per core. Handlers mostly wait on the model or the batcher, and
    # fewer threads than concurrent clients would keep requests from reaching the batch queue.
    workers = max_threads or 4 * (os.cpu_count() or 1)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="grpc"),
        handlers=_service_handlers(serving),
        options=options,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"could not bind {address}")
    server.start()
    server.bound_port = bound
    return server
