"""uvicorn's HTTP protocol with the service's error body for requests it cannot parse.

uvicorn answers a request its parser refuses (a NUL in a header, a URL or header block past the
parser's limits, a malformed request line) itself, before the app sees it, with a plain-text
``Invalid HTTP request received.``. Clients of this API parse one error body everywhere
(``service.errors``), so these answers use it too: 400 ``bad_request`` with a JSON body.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional: uvicorn then parses with h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def _body(msg: str) -> bytes:
    return json.dumps(
        {"error": {"code": "bad_request", "message": f"the HTTP request cannot be parsed: {msg}"}}
    ).encode()


class JsonErrorH11Protocol(H11Protocol):
    """h11 parsing, with the JSON error body for unparseable requests."""

    def send_400_response(self, msg: str) -> None:
        body = _body(msg)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def http_protocol() -> type:
    """The protocol class ``uvicorn.run(http=...)`` gets: httptools when installed (uvicorn's
    own choice), else h11; either answers unparseable requests with the JSON error body."""
    if HttpToolsProtocol is None:
        return JsonErrorH11Protocol

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        """httptools parsing, with the JSON error body for unparseable requests."""

        def send_400_response(self, msg: str) -> None:
            body = _body(msg)
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.append(
                b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % len(body)
            )
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return JsonErrorHttpToolsProtocol
