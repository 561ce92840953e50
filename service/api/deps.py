"""Shared route dependencies: the typed application state, API-key auth, upload reading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, UploadFile
from fastapi.security import APIKeyHeader

from service.errors import InvalidImage, PayloadTooLarge
from service.gallery import Gallery
from service.jobs import JobRunner
from service.keys import KeyRing, Scope
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
    keys: KeyRing

    @property
    def gallery(self) -> Gallery:
        """The gallery: every change to it goes through this one object."""
        return self.recognition.gallery


def get_state(request: Request) -> AppState:
    """The state the lifespan yielded."""
    state: AppState = request.state.app_state
    return state


State = Annotated[AppState, Depends(get_state)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def _scoped(scope: Scope) -> Callable[..., None]:
    def check(
        request: Request, state: State, key: Annotated[str | None, Depends(_api_key_header)]
    ) -> None:
        """Reject the request unless its key is valid (401) and holds the scope (403); note
        who asked for what, for the audit trail of write and admin requests."""
        request.state.audit_scope = scope
        if state.settings.auth.disabled:
            request.state.audit_who = "auth-disabled"
            return
        request.state.audit_who = "unknown-key"
        principal = state.keys.authenticate(key)
        request.state.audit_who = principal.key_id
        state.keys.require(principal, scope)

    return check


CanRead = Depends(_scoped("read"))
CanWrite = Depends(_scoped("write"))
IsAdmin = Depends(_scoped("admin"))


def read_upload(upload: UploadFile | None, state: AppState, field: str) -> bytes:
    """The bytes of an uploaded file, within the upload limit."""
    if upload is None:
        raise InvalidImage(f"no file in the form field {field!r}")
    limit = state.settings.limits.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{field!r} is over the upload limit of {limit} bytes", limit=limit)
    return data
