"""How a project extends the generic server: ``ModelAdapter``, its ``Route``s and their ``RequestContext``.

The server knows nothing of what a model means. A project subclasses ``ModelAdapter`` and passes
it to ``build_app(options, adapter=...)`` / ``process.main(argv, adapter=...)`` to add:

* per-version metadata, loaded when a version loads (``load_metadata``; the server keeps the
  result on ``LoadedVersion.metadata`` and never reads it);
* routes outside /v1 (``routes``), whose endpoints get a typed ``RequestContext``;
* which string inputs of a signature are encoded images (``image_inputs``: the server refuses
  bombs and shrinks big ones before the graph sees them);
* a pre-processing step for predict inputs, REST and gRPC alike (``preprocess``);
* observers of predictions, which may register Prometheus metrics (``observers``; see ``observers.py``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .errors import ServingError, invalid
from .observers import PredictObserver, notify_predict
from .options import ServerOptions
from .versions import LoadedVersion, SignatureInfo

if TYPE_CHECKING:  # app.py imports this module
    from .app import ServingApp

_INT64_MAX = 2**63 - 1


def parse_version(text: str | None) -> int | None:
    """A version from a URL or query string: ASCII digits that fit int64, else TF Serving's 400."""
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _INT64_MAX:
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise invalid(f"Failed to convert version: {shown} to numeric.")
    return int(text)


@dataclass
class RequestRecord:
    """What the access log, the metrics and the observers learn about one request as it runs."""

    model: str | None = None
    version: int | None = None
    api: str | None = None  # set for the routes the metrics count (predict, status, metadata, ...)
    bytes_in: int = 0
    error: ServingError | None = None


class RequestContext:
    """What a project route gets: the request, its path match, and the server operations it may use."""

    def __init__(self, server: ServingApp, request: Request, match: re.Match[str], record: RequestRecord):
        self._server = server
        self.request = request
        self.match = match
        self.record = record

    @property
    def options(self) -> ServerOptions:
        return self._server.options

    @property
    def default_model(self) -> str:
        """The model a path without a model name means (the first configured one)."""
        return self._server.default_model

    async def read_body(self) -> bytes:
        """The body, refused with 413 above ``max_body_bytes`` (checked before it is all read)."""
        return await self._server.read_body(self.request, self.record)

    def resolve(self, name: str, version_text: str | None, label: str | None, *, api: str) -> LoadedVersion:
        """The loaded version a request names (TF Serving's errors otherwise), recorded for logs and metrics."""
        self.record.model = name
        self.record.api = api
        loaded = self._server.resolve(name, parse_version(version_text), label)
        self.record.version = loaded.version
        return loaded

    async def prepare_image(self, data: bytes) -> bytes:
        """One encoded image as the graph should get it (bombs refused, big ones shrunk), off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._server.executor, self._server.prepare_image, data)

    async def predict(
        self, loaded: LoadedVersion, info: SignatureInfo, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run a signature as /v1 predict does (admission, batching, deadline); observers see it."""
        outputs = await self._server.execute(loaded, info, inputs)
        notify_predict(self._server.observers, loaded, info.name, inputs, outputs)
        return outputs


Endpoint = Callable[[RequestContext], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A route outside /v1: ``pattern`` must fullmatch the path; errors raised as ``ServingError``
    are answered in TF Serving's error shape."""

    pattern: re.Pattern[str]
    methods: frozenset[str]
    endpoint: Endpoint


class ModelAdapter:
    """What a project plugs into the server; every hook defaults to adding nothing."""

    def load_metadata(self, name: str, version: int, path: Path) -> Any:
        """Project data for a version as it loads (labels, reference statistics); kept on ``loaded.metadata``.

        Raising fails the load of that version, as a broken SavedModel would.
        """
        return None

    def routes(self) -> Sequence[Route]:
        return ()

    def observers(self) -> Sequence[PredictObserver]:
        return ()

    def image_inputs(self, info: SignatureInfo) -> frozenset[str]:
        """Inputs of ``info`` that carry encoded images. Default: every DT_STRING input (bytes that
        are no image PIL knows pass unchanged, so the graph gives its own error)."""
        return frozenset(alias for alias, spec in info.inputs.items() if spec.dtype == "DT_STRING")

    def preprocess(
        self, loaded: LoadedVersion, info: SignatureInfo, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Inputs of a predict request after the server's checks, as the model call gets them."""
        return inputs
