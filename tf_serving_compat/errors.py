"""Canonical (gRPC-style) error codes and their HTTP mapping, as TF Serving uses them.

Every failure inside the server is a ``ServingError`` carrying a canonical code,
so the REST layer can answer with the same status code TF Serving would.
"""

from __future__ import annotations

import re

HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


class ServingError(Exception):
    """An error with a canonical code; ``http_status`` follows TF Serving's mapping.

    ``http_status`` overrides the mapping where REST answers a status no canonical code has
    (413 for a body over the limit); gRPC and the metrics still see the canonical code.
    """

    def __init__(self, code: str, message: str, http_status: int | None = None):
        super().__init__(message)
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown canonical code {code!r}")
        self.code = code
        self.message = message
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status if self._http_status is not None else HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"ServingError({self.code}, {self.message!r})"


# One helper per error kind the server raises: every module raises through these.


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def unavailable(message: str) -> ServingError:
    return ServingError("UNAVAILABLE", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def unimplemented(message: str) -> ServingError:
    return ServingError("UNIMPLEMENTED", message)


def internal(message: str) -> ServingError:
    return ServingError("INTERNAL", message)


def data_loss(message: str) -> ServingError:
    return ServingError("DATA_LOSS", message)


def deadline_exceeded(message: str) -> ServingError:
    return ServingError("DEADLINE_EXCEEDED", message)


def too_large(message: str) -> ServingError:
    """A request body over ``--max_body_bytes``: REST answers 413, gRPC RESOURCE_EXHAUSTED."""
    return ServingError("RESOURCE_EXHAUSTED", message, http_status=413)


def from_tf_exception(exc: BaseException) -> ServingError:
    """Map a ``tf.errors.OpError`` (or anything else) to a ServingError, keeping its message."""
    # Only model calls fail this way, after TensorFlow is loaded; this module stays light to import.
    import tensorflow as tf  # noqa: PLC0415

    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        name = _TF_CODE_NAMES.get(exc.error_code, "UNKNOWN")
        return ServingError(name, clean_tf_message(exc.message))
    if isinstance(exc, (ValueError, TypeError)):
        # Python-side argument checks of a ConcreteFunction (wrong dtype/shape).
        return invalid(str(exc))
    return internal(f"{type(exc).__name__}: {exc}")


def clean_tf_message(message: str) -> str:
    """Drop eager-mode decoration ("Graph execution error: Detected at node ...", "[Op:...]").

    TF Serving returns the runtime status message only; so do we.
    """
    marker = "<stack traces unavailable>\n"
    if message.startswith("Graph execution error:"):
        if marker in message:
            message = message.split(marker, 1)[1]
        else:
            lines = message.splitlines()
            message = "\n".join(
                line
                for line in lines[1:]
                if line.strip() and not line.startswith(("Detected at node", "  File", "    "))
            )
    message = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message)
    return message.strip()


# tf.errors codes are the canonical gRPC codes (0..16).
_TF_CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
