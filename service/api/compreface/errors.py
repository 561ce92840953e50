"""CompreFace's error body, ``{"message": ..., "code": <int>}``, on the CompreFace routes only.

Every error on these routes is raised and answered as everywhere else (``service.errors``, the
middlewares), as ``{"error": {"code", "message", ...}}``; ``CompreFaceErrors``, the outermost
layer, rewrites that body for paths under ``/api/v1/`` into CompreFace's shape, with
CompreFace's numeric code (its ``CommonExceptionCode``) and its HTTP status where CompreFace
has one for the case. Our own routes are untouched, and no error path is duplicated.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/api/v1/"

#: our stable code -> (CompreFace code, HTTP status, or None to keep ours)
CODES: dict[str, tuple[int, int | None]] = {
    "no_face": (28, 400),  # NO_FACES_FOUND
    "multiple_faces": (31, 400),  # TOO_MANY_FACES
    "subject_not_found": (42, 404),  # SUBJECT_NOT_FOUND
    "subject_exists": (43, 400),  # SUBJECT_ALREADY_EXISTS
    "face_not_found": (11, 404),  # IMAGE_NOT_FOUND
    "invalid_image": (21, 400),  # UNAVAILABLE_FILE_EXTENSION (also CompreFace's bad base64)
    "unsupported_image": (21, 400),
    "validation_error": (26, 400),  # VALIDATION_CONSTRAINT_VIOLATION
    "invalid_request": (36, 400),  # INCORRECT_ARGUMENT
    "unknown_parameter": (36, 400),
    "low_quality": (36, 400),
    "missing_api_key": (20, None),  # MISSING_REQUEST_HEADER (status stays 401)
    "unauthorized": (10, None),  # MODEL_NOT_FOUND: "service with API Key ... not found"
    "wrong_embedding_count": (37, 400),  # WRONG_EMBEDDING_COUNT
    "unsupported_plugin": (36, 400),
}


def compreface_body(status: int, body: bytes) -> tuple[int, bytes]:
    """CompreFace's status and body for one of our error bodies (unchanged if not one)."""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return status, body
    if code == "unauthorized" and message.startswith("missing API key"):
        code = "missing_api_key"
    number, new_status = CODES.get(code, (0, None))  # 0: CompreFace's UNDEFINED
    return new_status or status, json.dumps({"message": message, "code": number}).encode()


class CompreFaceErrors:
    """Rewrites error bodies (status >= 400, JSON) of requests under ``/api/v1/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                types = [v for k, v in message.get("headers") or [] if k == b"content-type"]
                is_json = bool(types) and types[0].startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    start = message  # hold it until the body is complete
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status, body = compreface_body(start["status"], b"".join(chunks))
            kept = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
            kept.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": kept})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
