"""Hooks for code outside the server to watch what it serves (``ServingApp(observers=[...])``).

The generic server knows nothing of a model's meaning; a project plugs in an observer to derive
its own statistics (prediction distributions, input drift) from tensors the server already has:
no extra model pass. Observers are called on the request path, so they must be cheap (queue the
work, do it elsewhere) and must not raise: a failing observer is logged and never fails a request.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger("tf_serving_compat.observers")


@runtime_checkable
class PredictObserver(Protocol):
    """What the server calls. ``attach`` once, at construction; the others per request."""

    def attach(self, serving: Any) -> None:
        """The ``ServingApp`` (its ``registry`` lists loaded versions, its ``metrics`` may be None)."""

    def on_predict(
        self, loaded: Any, signature_name: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        """A successful predict: the ``LoadedVersion``, the inputs as the graph got them, its outputs."""

    def on_reject(self, model: str | None, code: str, message: str) -> None:
        """A predict refused before or by the model: canonical code (``INVALID_ARGUMENT``...) and message."""


def notify_predict(
    observers: list, loaded: Any, signature_name: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> None:
    for observer in observers:
        try:
            observer.on_predict(loaded, signature_name, inputs, outputs)
        except Exception:  # noqa: BLE001 - watching must never fail serving
            log.exception("observer %s failed in on_predict", type(observer).__name__)


def notify_reject(observers: list, model: str | None, code: str, message: str) -> None:
    for observer in observers:
        try:
            observer.on_reject(model, code, message)
        except Exception:  # noqa: BLE001
            log.exception("observer %s failed in on_reject", type(observer).__name__)
