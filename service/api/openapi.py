"""The OpenAPI description tells the truth about errors (and uploads).

FastAPI documents only its own 422 body (``{"detail": [...]}``), which the service never sends:
every failure answers ``{"error": {"code", "message", "details"}}`` (``service.errors``). A client
generated from the spec would then parse real errors into the wrong types. This module is the one
place that documents, for every operation of our own API (``/v1/...``), the statuses it can answer
with that body and the stable codes behind each status.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, FastAPI

from service.errors import HTTP_CODES, MarginFaceError
from service.middleware import required_scope
from service.schemas import ErrorResponse

_REF = "#/components/schemas/ErrorResponse"
_OCTETS = "application/octet-stream"
_BODY_METHODS = {"post", "put", "patch"}
_WRITE_METHODS = {"post", "put", "patch", "delete"}


def _codes_by_status() -> dict[int, list[str]]:
    """Every stable error code, by the HTTP status it is answered with."""
    codes: dict[int, set[str]] = defaultdict(set)
    pending: list[type[MarginFaceError]] = [MarginFaceError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.status < 500 or cls.status in (503, 507):
            codes[cls.status].add(cls.code)
    for status, code in HTTP_CODES.items():
        codes[status].add(code)
    codes[422].add("validation_error")
    return {status: sorted(found) for status, found in codes.items()}


def _statuses(method: str, path: str, keyed: bool) -> list[int]:
    """The error statuses one operation can answer (a superset is harmless; a gap is not)."""
    statuses = [400, 408, 422, 503]
    if keyed:
        statuses += [401, 403]
    if "{" in path:
        statuses.append(404)
    if method in _BODY_METHODS:
        statuses += [413, 415]
    if method in _WRITE_METHODS:
        statuses += [409, 507]
    return sorted(statuses)


def _mark_binary(node: Any) -> None:
    """Uploads also say ``format: binary``: FastAPI writes OpenAPI 3.1's ``contentMediaType``
    alone, which common client generators do not read as a file (they then send the photo as a
    text field)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == _OCTETS:
            node.setdefault("format", "binary")
        for value in node.values():
            _mark_binary(value)
    elif isinstance(node, list):
        for value in node:
            _mark_binary(value)


def _keyed(routers: list[APIRouter]) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route that needs an API key."""
    keyed = set()
    for router in routers:
        for route in router.routes:
            deps = [*router.dependencies, *getattr(route, "dependencies", [])]
            if required_scope(deps) is not None:
                keyed |= {(m, getattr(route, "path", "")) for m in getattr(route, "methods", ())}
    return keyed


def document_errors(app: FastAPI, routers: list[APIRouter]) -> None:
    """Replace ``app.openapi`` with one whose ``/v1`` operations list their error responses."""
    codes = _codes_by_status()
    keyed_paths = _keyed(routers)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas["ErrorResponse"] = error_schema
        for path, operations in spec.get("paths", {}).items():
            if not path.startswith("/v1/"):
                continue
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                keyed = (method.upper(), path) in keyed_paths
                for status in _statuses(method, path, keyed):
                    responses[str(status)] = {
                        "description": "error: " + ", ".join(codes.get(status, ["http_error"])),
                        "content": {"application/json": {"schema": {"$ref": _REF}}},
                    }
        _mark_binary(schemas)
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's, never sent
            if f"/{unused}\"" not in json.dumps([spec["paths"], schemas]):
                schemas.pop(unused, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
