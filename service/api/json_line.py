"""JSON answers end with a newline, as curl users and line-reading clients expect.

Without it the README's `curl` examples print the body and the next prompt on one line, and a
client reading a stream line by line waits for a line that never ends. Every JSON answer of ours
(routes through ``FastAPI(default_response_class=...)``, errors through ``errors.error_body``)
uses this class."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class JSONLineResponse(JSONResponse):
    """``application/json``, compact as FastAPI's, plus one trailing newline."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"
