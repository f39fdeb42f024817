"""uvicorn's HTTP protocols, answering requests they cannot parse with a JSON error body.

uvicorn answers an unparseable request (an unknown method such as ``FOO``, a malformed request
line or header) itself, before any application code runs, with a plain-text 400. Every other
4xx of this server is ``{"error": "..."}``, so clients parse one shape; these subclasses keep
uvicorn's behaviour (400, ``connection: close``) and change only the body.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MALFORMED_REQUEST = (
    "Malformed HTTP request: the request line or a header could not be parsed "
    "(unknown method, bad request target, invalid header or framing)"
)


def _json_body(_: str) -> bytes:
    return json.dumps({"error": MALFORMED_REQUEST}).encode("ascii")


def protocol_class(stack: str) -> type:
    """The HTTP protocol class for ``--http_stack``: ``auto`` (httptools when installed) or ``asyncio`` (h11)."""
    if stack == "auto":
        try:
            return _httptools_protocol()
        except ImportError:
            pass
    return _h11_protocol()


def _httptools_protocol() -> type:
    # httptools is optional: ImportError selects the h11 stack.
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol  # noqa: PLC0415

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = _json_body(msg)
            content = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()

    return JsonErrorHttpToolsProtocol


def _h11_protocol() -> type:

    class JsonErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = _json_body(msg)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ]
            try:
                for event in (
                    h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:  # the connection is past the point of answering
                pass
            self.transport.close()

    return JsonErrorH11Protocol
