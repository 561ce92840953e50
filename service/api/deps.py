"""Shared route dependencies: the typed application state, API-key auth, upload reading."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, UploadFile
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader

from service.errors import InvalidImage, PayloadTooLarge, Unauthorized, UnknownParameter
from service.gallery import Gallery
from service.jobs import JobRunner
from service.keys import KeyRing, Principal, Scope
from service.metrics import Metrics
from service.middleware import PRINCIPAL
from service.model_mover import ModelMover
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
    mover: ModelMover | None = None  # moves the gallery to another recognizer in place

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
    """A route's required scope. The key is checked by ``service.middleware.Authenticate``
    from the headers, before the body is read; this dependency declares the scope (the
    middleware reads ``required_scope``) and, in depth, refuses a request that reached the
    route without a principal holding it."""

    def check(request: Request, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
        principal: Principal | None = request.scope.get(PRINCIPAL)
        if principal is None:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        KeyRing.require(principal, scope)

    check.required_scope = scope  # type: ignore[attr-defined]
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


def known_query_only(request: Request) -> None:
    """Refuse query parameters the route does not declare (422 ``unknown_parameter``): a
    misplaced ``?far=0.01`` on a form route would otherwise be ignored and the default used.
    Installed for every route by ``create_app``."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    parts = list(_walk(route.dependant))
    declared = {p.alias for d in parts for p in d.query_params}
    unknown = sorted(set(request.query_params) - declared)
    if not unknown:
        return
    form = {p.alias for d in parts for p in d.body_params}
    hints = [
        f"{name} is a form field of this route: send it in the multipart body"
        if name in form
        else name
        for name in unknown
    ]
    raise UnknownParameter(
        f"unknown query parameter(s) for {request.method} {route.path}: " + "; ".join(hints),
        unknown=unknown,
        accepted=sorted(declared),
    )


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    """A route's dependant and all of its sub-dependencies."""
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)
