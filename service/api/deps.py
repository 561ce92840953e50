"""Shared route dependencies: the typed application state, API-key auth, upload reading."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, UploadFile
from fastapi.security import APIKeyHeader

from service.errors import InvalidImage, PayloadTooLarge, Unauthorized
from service.jobs import JobRunner
from service.metrics import Metrics
from service.recognition import Recognition
from service.settings import Settings


@dataclass
class AppState:
    """What the lifespan builds and routes use."""

    settings: Settings
    recognition: Recognition
    metrics: Metrics
    jobs: JobRunner


def get_state(request: Request) -> AppState:
    """The state the lifespan yielded."""
    state: AppState = request.state.app_state
    return state


State = Annotated[AppState, Depends(get_state)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(state: State, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """Reject the request unless it carries a configured API key (constant-time comparison)."""
    auth = state.settings.auth
    if auth.disabled:
        return
    if not key:
        raise Unauthorized("missing API key: send it in the X-API-Key header")
    given = key.encode()
    ok = False
    for configured in auth.api_keys:
        ok |= hmac.compare_digest(given, configured.get_secret_value().encode())
    if not ok:
        raise Unauthorized("the API key is not valid")


Authorized = Depends(require_api_key)


def read_upload(upload: UploadFile | None, state: AppState, field: str) -> bytes:
    """The bytes of an uploaded file, within the upload limit."""
    if upload is None:
        raise InvalidImage(f"no file in the form field {field!r}")
    limit = state.settings.limits.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{field!r} is over the upload limit of {limit} bytes", limit=limit)
    return data
