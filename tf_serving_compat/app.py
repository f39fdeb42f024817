"""The Starlette app: TF Serving's /v1 REST routes, /healthz, and the routes of the project's adapter.

One ASGI dispatcher takes every method and path so that routing, status codes
and error bodies follow TF Serving exactly (``Malformed request: <METHOD> <path>``
under /v1, JSON 404 elsewhere) instead of Starlette's defaults. Model calls run
in worker threads or the dynamic batcher; the event loop only awaits them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, cast

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hostinfo import RewriteDecision

from . import tensor_json as tj
from .adapter import ModelAdapter, RequestContext, RequestRecord, parse_version
from .batching import Batcher
from .errors import ServingError, deadline_exceeded, invalid, not_found, too_large, unimplemented
from .execution import Admission, batch_size_of, run_in_pieces
from .images import prepare_image, release_freed_memory
from .monitoring import Metrics
from .observers import notify_predict, notify_reject
from .options import ServerOptions
from .versions import LoadedVersion, ModelRegistry, SignatureInfo

log = logging.getLogger("tf_serving_compat")
access_log = logging.getLogger("tf_serving_compat.access")

_NAME = r"([^/:]+)"
# [0-9], not \d: Python's \d also matches full-width and other Unicode digits ("１１").
_VERSION_OR_LABEL = rf"(?:(?:/versions/([0-9]+))|(?:/labels/{_NAME}))?"
PREDICT_RE = re.compile(rf"/v1/models/{_NAME}{_VERSION_OR_LABEL}:(classify|regress|predict)", re.IGNORECASE)
STATUS_RE = re.compile(rf"/v1/models(?:/{_NAME})?{_VERSION_OR_LABEL}(?:/(metadata))?", re.IGNORECASE)
V1_RE = re.compile(r"/v1/", re.IGNORECASE)
_INLINE_PARSE_BYTES = 256 * 1024  # bigger bodies are parsed in a worker thread
_TRIM_AFTER_BYTES = 1024 * 1024


def json_response(body: str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


class ServingApp:
    """Holds the registry, batcher and thread pool; ``self.app`` is the Starlette application."""

    def __init__(
        self,
        registry: ModelRegistry,
        options: ServerOptions,
        *,
        default_model: str,
        batcher: Batcher | None = None,
        adapter: ModelAdapter | None = None,
        metrics: Metrics | None = None,
    ):
        self.registry = registry
        self.options = options
        self.default_model = default_model
        self.batcher = batcher
        self.adapter = adapter or ModelAdapter()
        self.routes = list(self.adapter.routes())
        self.metrics = metrics
        self.rewrite: RewriteDecision | None = None  # set by the factory when it applied one
        self.executor = concurrent.futures.ThreadPoolExecutor(options.worker_threads, thread_name_prefix="model")
        self.admission = Admission(options.max_inflight_images)
        self._client_key = os.urandom(16)  # per process: log lines correlate, addresses stay unknown
        self.app = _Dispatcher(self, Starlette(lifespan=self._lifespan))
        self._closed = False
        self.observers = list(self.adapter.observers())  # watch predictions, never alter them
        for observer in self.observers:
            observer.attach(self)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        self.registry.start()
        try:
            yield
        finally:
            self.registry.stop()

    def close(self) -> None:
        """Stop the poller, drain the batcher and the model threads (after the server stopped)."""
        if self._closed:
            return
        self._closed = True
        self.registry.stop()
        if self.batcher is not None:
            self.batcher.stop()
        self.executor.shutdown(wait=True)

    # ------------------------------------------------------------ plumbing

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        started = time.perf_counter()
        record = RequestRecord()
        try:
            _require_host(scope)
            response = await self._route(request, record)
        except ClientDisconnect:
            # The client went away mid-request: nobody to answer; an abort, not a server error.
            log.info("Client aborted %s %s", request.method, scope.get("path"))
            access_log.info(
                json.dumps(
                    {
                        "method": request.method,
                        "path": scope.get("path"),
                        "status": 499,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        "bytes_in": record.bytes_in,
                        "aborted": True,
                    }
                )
            )
            return
        except ServingError as exc:
            record.error = exc
            response = json_response(tj.error_json(exc.message), exc.http_status)
        except Exception as exc:  # noqa: BLE001 - never let a bug kill the connection without JSON
            log.exception("Unhandled error for %s %s", request.method, scope.get("path"))
            response = json_response(tj.error_json(f"Internal error: {type(exc).__name__}"), 500)
        await response(scope, receive, send)
        self._after_response(scope, record, response, started)

    def _after_response(self, scope: dict, record: RequestRecord, response: Response, started: float) -> None:
        """Memory trim, metrics, reject observers and the access log line of one answered request."""
        if record.bytes_in > _TRIM_AFTER_BYTES:
            release_freed_memory()  # big bodies leave freed pages in glibc's arenas otherwise
        if self.metrics is not None and record.api:
            code: str | int = response.status_code
            if response.status_code == 200:
                code = "OK"
            elif record.error is not None:
                code = record.error.code
            self.metrics.observe_request(record.api, record.model, code, time.perf_counter() - started)
        if self.observers and (record.api or "").startswith("predict") and record.error is not None:
            notify_reject(self.observers, record.model, record.error.code, record.error.message)
        access_log.info(
            json.dumps(
                {
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": response.status_code,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    "bytes_in": record.bytes_in,
                    "bytes_out": len(response.body),
                    "model": record.model,
                    "version": record.version,
                    "client": self.client_pseudonym(scope),
                }
            )
        )

    def client_pseudonym(self, scope: dict) -> str | None:
        """The client's address as a keyed hash: logs never carry raw client IPs."""
        client = scope.get("client")
        if not client:
            return None
        digest = hashlib.blake2s(str(client[0]).encode(), key=self._client_key, digest_size=6).hexdigest()
        return f"client-{digest}"

    async def read_body(self, request: Request, record: RequestRecord) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise invalid(f"Invalid Content-Length header: {declared!r}") from None
            if size > limit:
                record.bytes_in = size
                raise too_large(f"Request body of {size} bytes exceeds the limit of {limit} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                record.bytes_in = total
                raise too_large(f"Request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        record.bytes_in = total
        return b"".join(chunks)

    async def _maybe_in_thread(self, size: int, fn: Any, *args: Any) -> Any:
        if size < _INLINE_PARSE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _route(self, request: Request, record: RequestRecord) -> Response:
        path = request.scope["path"]
        method = request.method.upper()
        if V1_RE.match(path):
            return await self._v1(request, method, path, record)
        if path == "/healthz" and method in ("GET", "HEAD"):
            return self._healthz()
        if self.metrics is not None and path == self.metrics.path and method in ("GET", "HEAD"):
            return Response(self.metrics.exposition(), media_type=self.metrics.content_type)
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match and method in route.methods:
                return await route.endpoint(RequestContext(self, request, match, record))
        raise not_found(f"Not found: {method} {path}")

    # ------------------------------------------------------------ /v1

    async def _v1(self, request: Request, method: str, path: str, record: RequestRecord) -> Response:
        match = PREDICT_RE.fullmatch(path)
        if method == "POST" and match:
            name, version_text, label, verb = match.groups()
            record.model = name
            record.api = verb.lower()
            version = parse_version(version_text)
            if verb.lower() == "predict":  # the body is handed over, not kept here: _predict frees it early
                return await self._predict(name, version, label, await self.read_body(request, record), record)
            return self._classify_regress(name, version, label, verb.lower(), await self.read_body(request, record))
        match = STATUS_RE.fullmatch(path)
        if method == "GET" and match:
            name, version_text, label, metadata = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            record.model = name
            record.api = "metadata" if metadata else "status"
            version = parse_version(version_text)
            if metadata:
                return self._metadata(name, version, label, record)
            return self._status(name, version, label)
        raise invalid(f"Malformed request: {method} {path}")

    def resolve(self, name: str, version: int | None, label: str | None) -> LoadedVersion:
        manager = self.registry.get(name)
        if manager is None:
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {spec}")
        return manager.resolve(version, label)

    def _status(self, name: str, version: int | None, label: str | None) -> Response:
        manager = self.registry.get(name)
        if manager is None:
            raise not_found(f"Could not find any versions of model {name}")
        entries = manager.status(version, label)
        return json_response(json.dumps({"model_version_status": entries}))

    def _metadata(self, name: str, version: int | None, label: str | None, record: RequestRecord) -> Response:
        loaded = self.resolve(name, version, label)
        record.version = loaded.version
        signature_defs = {key: loaded.signatures[key].as_json for key in sorted(loaded.signatures)}
        body = {
            "model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}},
        }
        return json_response(json.dumps(body))

    def _classify_regress(self, name: str, version: int | None, label: str | None, verb: str, body: bytes) -> Response:
        """Our signatures are predict-only: answer what TF Serving answers for them (400)."""
        doc = tj.parse_json_body(body)
        signature = tj.signature_name(doc)
        examples = doc.get("examples")
        if "examples" not in doc:
            raise invalid(
                f"JSON Value: {tj.value_to_string(doc)} When method is classify, key 'examples' "
                "is expected and was not found"
            )
        if not isinstance(examples, list):
            raise invalid(f"JSON Value: {tj.value_to_string(doc)} Expecting 'examples' value to be an list/array")
        if not examples:
            raise invalid(f"JSON Value: {tj.value_to_string(doc)} 'examples' value is an empty array")
        for example in examples:
            if not isinstance(example, dict):
                raise invalid(f"Example must be JSON object but got JSON {tj.json_type_string(example)}")
        loaded = self.resolve(name, version, label)
        info = loaded.signature(signature)
        kind = "classification" if verb == "classify" else "regression"
        expected = f"tensorflow/serving/{verb}"
        if info.method_name != expected:
            raise invalid(f"Expected {kind} signature method_name to be {expected}. Was: {info.method_name}")
        raise unimplemented(f"{verb} signatures are not supported by this server; use :predict")

    def _prepare(self, loaded: LoadedVersion, doc: dict) -> tuple[SignatureInfo, str, dict[str, np.ndarray]]:
        """Request JSON -> validated input arrays (type, shape, batch cap, image size)."""
        info = loaded.signature(tj.signature_name(doc))
        if not info.inputs:
            raise invalid(f"Failed to get input map for signature: {info.name}")
        fmt, inputs = tj.parse_predict_inputs(doc, {k: v.dtype for k, v in info.inputs.items()})
        return info, fmt, self.validate_inputs(loaded, info, inputs)

    def validate_inputs(
        self, loaded: LoadedVersion, info: SignatureInfo, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Checks shared by REST and gRPC (batch cap, signature shapes, image header sizes), then the
        adapter's pre-processing; returns the inputs the model call gets."""
        for alias, array in inputs.items():
            if array.ndim and array.shape[0] > self.options.max_instances:
                raise invalid(
                    f"Too many instances for input {alias}: {array.shape[0]} "
                    f"(the limit is {self.options.max_instances} per request)"
                )
        loaded.check_inputs(info, inputs)
        self._check_images(info, inputs)
        return self.adapter.preprocess(loaded, info, inputs)

    def _check_images(self, info: SignatureInfo, inputs: dict[str, np.ndarray]) -> None:
        """The adapter's encoded image inputs: refuse bombs, hand big images to the graph already shrunk."""
        images = self.adapter.image_inputs(info)
        for alias, array in inputs.items():
            if alias in images:
                for index in np.ndindex(array.shape):
                    array[index] = self.prepare_image(cast(bytes, array[index]))

    def prepare_image(self, data: bytes) -> bytes:
        """One encoded image as the graph should get it (``images.prepare_image``); 400 above the limit."""
        return prepare_image(data, self.options.max_image_pixels, self.options.image_decode_pixels)

    def execution_batch_size(self, loaded: LoadedVersion) -> int:
        """Images one model call of ``loaded`` may run at once (measured at load, or set by a flag)."""
        measured = loaded.measured_with[0] if loaded.measured_with else None
        return self.options.execution.batch_size(loaded.bytes_per_item, measured)

    def submit(
        self, loaded: LoadedVersion, info: SignatureInfo, inputs: dict[str, np.ndarray], api: str = "predict"
    ) -> concurrent.futures.Future:
        """Admit, then queue a model call on the batcher (when on) or the model threads; REST and gRPC share it.

        The call runs in execution-sized pieces (``execution.run_in_pieces``), so its memory does not
        grow with the request's batch; the images stay counted as in flight until it finishes.
        """
        metrics = self.metrics
        piece = self.execution_batch_size(loaded)
        items = batch_size_of(inputs)

        def run(batch_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.perf_counter()
            try:
                return run_in_pieces(lambda part: loaded.run(info.name, part), batch_inputs, piece)
            finally:
                if metrics is not None:
                    metrics.observe_runtime(loaded.name, api, time.perf_counter() - started)

        self.admission.acquire(items)
        try:
            batcher = self.batcher
            if batcher is not None and all(a.ndim >= 1 for a in inputs.values()):
                future = batcher.submit((loaded.name, loaded.version, info.name), run, inputs)
            else:
                future = self.executor.submit(run, inputs)
        except BaseException:
            self.admission.release(items)
            raise
        future.add_done_callback(lambda _: self.admission.release(items))
        return future

    async def execute(
        self, loaded: LoadedVersion, info: SignatureInfo, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        future = self.submit(loaded, info, inputs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.options.timeout_s)
        except TimeoutError:
            future.cancel()
            raise deadline_exceeded(
                f"Deadline Exceeded: no result within {self.options.timeout_s * 1000:.0f} ms"
            ) from None

    async def _predict(
        self, name: str, version: int | None, label: str | None, body: bytes, record: RequestRecord
    ) -> Response:
        doc = await self._maybe_in_thread(len(body), tj.parse_json_body, body)
        loaded = self.resolve(name, version, label)
        record.version = loaded.version
        info, fmt, inputs = await self._maybe_in_thread(len(body), self._prepare, loaded, doc)
        del body, doc  # the request's text and parsed JSON are not needed while the model runs
        outputs = await self.execute(loaded, info, inputs)
        notify_predict(self.observers, loaded, info.name, inputs, outputs)
        text = await self._maybe_in_thread(
            sum(v.size for v in outputs.values()) * 16, tj.predict_response_json, outputs, fmt
        )
        return json_response(text)

    # ------------------------------------------------------------ outside /v1

    def _healthz(self) -> Response:
        models = {name: m.loaded_versions() for name, m in self.registry.models.items()}
        ok = all(models.values())
        body = {"status": "ok" if ok else "unavailable", "models": models}
        return json_response(json.dumps(body), 200 if ok else 503)


def _require_host(scope: dict) -> None:
    """RFC 9112 section 3.2: an HTTP/1.1 request without a Host header is answered 400."""
    if scope.get("http_version") == "1.1" and not any(name == b"host" for name, _ in scope.get("headers", ())):
        raise invalid("Missing Host header: HTTP/1.1 requests must send one (RFC 9112, section 3.2)")


class _Dispatcher:
    """The ASGI app: every HTTP request goes to ``ServingApp.handle`` whatever its method or path
    (Starlette's router would answer paths with control characters itself, in plain text);
    lifespan events go to Starlette, which starts and stops the version poller."""

    def __init__(self, owner: ServingApp, lifespan_app: Starlette):
        self.owner = owner
        self.lifespan_app = lifespan_app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.owner.handle(scope, receive, send)
        else:
            await self.lifespan_app(scope, receive, send)
