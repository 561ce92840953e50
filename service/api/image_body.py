"""Images in a request body: multipart/form-data files or base64 strings in a JSON object.

One reader for every route that takes images either way (the CompreFace routes, and ours where
base64 makes sense): a JSON body carries each image under the same name as its form field;
any other body is refused with an error that names both ways, never a bare validation error.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import InvalidImage, InvalidRequest, PayloadTooLarge

MULTIPART = "multipart/form-data"
JSON = "application/json"


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
