"""Images in a request body: multipart/form-data files or base64 strings in a JSON object.

One reader for every route that takes images either way (the CompreFace routes, and ours where
base64 makes sense): a JSON body carries each image under the same name as its form field;
any other body is refused with an error that names both ways, never a bare validation error.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InvalidImage, InvalidRequest, MarginFaceError, PayloadTooLarge

MULTIPART = "multipart/form-data"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def decode_base64(value: object, field: str) -> bytes:
    """The bytes of a base64 string (a ``data:...;base64,`` prefix is allowed); InvalidImage."""
    if not isinstance(value, str):
        raise InvalidImage(f"{field!r} must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{field!r}: the provided value is not Base64 ({exc})") from exc
    if not data:
        raise InvalidImage(f"{field!r} is empty")
    return data


async def read_json_object(request: Request) -> dict[str, Any]:
    """The JSON object of a request body; InvalidRequest if it is not one."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the JSON body must be an object")
    return body


async def read_images(
    request: Request, fields: tuple[str, ...], *, limit_bytes: int
) -> dict[str, bytes]:
    """Every field of ``fields`` as image bytes, from a multipart form or a base64 JSON body.

    Raises InvalidImage (missing field, bad base64), PayloadTooLarge (over ``limit_bytes``) and
    InvalidRequest for a body that is neither multipart/form-data nor application/json.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    found: dict[str, bytes] = {}
    if content_type == MULTIPART:
        form = await request.form(max_files=len(fields) + 2, max_fields=16)
        for name in fields:
            item = form.get(name)
            if item is None:
                continue
            if isinstance(item, UploadFile):
                data = await item.read(limit_bytes + 1)
            else:  # a form field sent as text: take it as base64, as CompreFace's UI does
                data = decode_base64(item, name)
            found[name] = data
    elif content_type == JSON:
        body = await read_json_object(request)
        for name in fields:
            if body.get(name) is not None:
                found[name] = decode_base64(body[name], name)
    else:
        said = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise InvalidRequest(
            f"this route takes images as {MULTIPART} (form field(s) {', '.join(fields)}) or "
            f"as {JSON} with each image base64-encoded under the same name; got {said}"
        )
    for name in fields:
        if name not in found:
            raise InvalidImage(
                f"no image in {name!r}: send it as a {MULTIPART} file field {name!r} or as "
                f'{JSON} {{"{name}": "<base64>"}}'
            )
        if len(found[name]) > limit_bytes:
            raise PayloadTooLarge(
                f"{name!r} is over the upload limit of {limit_bytes} bytes", limit=limit_bytes
            )
    return found


class NotMultipart(MarginFaceError):
    """An image route got a body that is neither multipart/form-data nor base64 JSON."""

    code = "validation_error"
    status = 422


def json_to_multipart(
    body: bytes, file_fields: tuple[str, ...], required: str | None, *, boundary: str
) -> bytes:
    """A JSON object's images (base64 strings, or lists of them) and plain fields as the
    multipart body the route parses (``required``: the image it must hold; None: the route
    says what it needs). InvalidImage, InvalidRequest."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidRequest('the JSON body must be an object: {"<field>": "<base64>", ...}')
    if required is not None and data.get(required) in (None, [], ""):
        raise InvalidImage(
            f"no image in {required!r}: send it as a {MULTIPART} file field {required!r} or as "
            f'{JSON} {{"{required}": "<base64>"}}'
        )
    parts: list[bytes] = []

    def part(name: str, value: bytes, filename: str | None = None) -> None:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename:
            head += "Content-Type: application/octet-stream\r\n"
        parts.append(head.encode() + b"\r\n" + value + b"\r\n")

    for name, value in data.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidRequest(f"unexpected field {name!r} in the JSON body")
        if name in file_fields:
            values = value if isinstance(value, list) else [value]
            for i, item in enumerate(values):
                part(name, decode_base64(item, name), filename=f"{name}-{i}")
        elif value is None:
            continue
        elif isinstance(value, bool):
            part(name, b"true" if value else b"false")
        elif isinstance(value, str | int | float):
            part(name, str(value).encode("utf-8", "surrogatepass"))
        else:
            raise InvalidRequest(f"{name!r} must be a string, a number or a boolean")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


class Base64Bodies:
    """Our image routes (multipart) also take ``application/json`` with each file field as a
    base64 string (a list of them for a multi-file field): the body is rewritten as the
    multipart body the route already parses, so validation, limits and answers are the
    multipart ones. Any other body gets an error that names both ways. ``routes`` maps
    (method, path template) to (file fields, the required one)."""

    def __init__(
        self, app: ASGIApp, routes: dict[tuple[str, str], tuple[tuple[str, ...], str | None]]
    ):
        self.app = app
        self.routes = [
            (method, compile_path(path)[0], fields) for (method, path), fields in routes.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http":
            for method, regex, fields in self.routes:
                if scope.get("method") == method and regex.match(scope.get("path", "")):
                    found = fields
        if found is None:
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers") or []]
        types = [v for k, v in headers if k == b"content-type"]
        kind = types[0].split(b";")[0].strip().lower().decode("latin-1") if types else ""
        file_fields, required = found
        if kind == MULTIPART or (kind == FORM and required is None):
            # a route whose image is optional also takes a plain form (its other fields)
            await self.app(scope, receive, send)
            return
        from service.middleware import send_error  # the one error body

        if kind != JSON:
            said = f"Content-Type {kind!r}" if kind else "no Content-Type"
            await send_error(
                send,
                NotMultipart(
                    f"this route takes {MULTIPART} (file field(s) {', '.join(file_fields)}) or "
                    f"{JSON} with each file base64-encoded under the same name; got {said}"
                ),
            )
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        boundary = "marginface-" + secrets.token_hex(16)
        try:
            body = json_to_multipart(b"".join(chunks), file_fields, required, boundary=boundary)
        except MarginFaceError as exc:
            await send_error(send, exc)
            return
        kept = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
        kept += [
            (b"content-type", f"{MULTIPART}; boundary={boundary}".encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": kept}, replay, send)


#: our image routes: (method, path) -> (file fields, the one that must be there, if one must)
IMAGE_ROUTES: dict[tuple[str, str], tuple[tuple[str, ...], str | None]] = {
    ("POST", "/v1/identify"): (("image",), "image"),
    ("POST", "/v1/detect"): (("image",), "image"),
    ("POST", "/v1/embed"): (("image",), "image"),
    ("POST", "/v1/verify"): (("image_a", "image_b"), "image_a"),
    ("POST", "/v1/subjects/{subject_id}/faces"): (("files",), "files"),
    # a photo (`image`) or a gallery face (`face_id`): the route refuses neither or both
    ("POST", "/v1/subjects/{subject_id}/negatives"): (("image",), None),
}
