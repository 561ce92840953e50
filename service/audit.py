"""The audit trail: one JSON line per write or admin request (who, what, when, outcome).

Who is the API key's id (never the key), what is the route with its subject, face or job id,
when is UTC time; the outcome is the HTTP status, so refused attempts are recorded too. Nothing
biometric goes in: no images, no embeddings, no names or metadata. Lines go to the
``marginface.audit`` logger and, with ``privacy.audit_log_path``, are appended to that file.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import request_id

audit_log = logging.getLogger("marginface.audit")

AUDITED_SCOPES = {"write", "admin"}
_TARGETS = ("subject_id", "face_id", "job_id")
#: what the gallery's write path reports a request touched (faces created or erased, ...)
_touched: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "audit_touched", default=None
)


def audit_targets(action: str, targets: dict[str, Any]) -> None:
    """The gallery's ``on_write`` hook: note what this request's write touched, for its audit
    line (ids only: never names, metadata or embeddings)."""
    touched = _touched.get()
    if touched is None:
        return
    face_ids = [int(f) for f in targets.get("face_ids", [])]
    if "face_id" in targets:
        face_ids.append(int(targets["face_id"]))
    touched.setdefault("actions", []).append(action)
    if face_ids:
        touched.setdefault("face_ids", []).extend(face_ids)
    if "negative_id" in targets:
        touched.setdefault("negative_ids", []).append(int(targets["negative_id"]))


class AuditFile:
    """Appends JSON lines to a file, one write per line (safe across threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry and flush it to the OS."""
        line = json.dumps(entry, ensure_ascii=True) + "\n"
        with self._lock, self.path.open("a", encoding="ascii") as fh:
            fh.write(line)


class AuditTrail:
    """ASGI middleware: after each request the auth check marked as write or admin scope,
    record who did what to which subject, face or job, and how it ended."""

    def __init__(self, app: ASGIApp, path: Path | None = None) -> None:
        self.app = app
        self.file = AuditFile(path) if path is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        touched: dict[str, Any] = {}
        token = _touched.set(touched)  # routes run in a thread pool with a copy of this context
        try:
            await self.app(scope, receive, record_status)
        finally:
            _touched.reset(token)
            state = scope.get("state") or {}
            if state.get("audit_scope") in AUDITED_SCOPES:
                self._record(scope, state, status, touched)

    def _record(
        self, scope: Scope, state: dict[str, Any], status: int, touched: dict[str, Any]
    ) -> None:
        route = scope.get("route")
        params = scope.get("path_params") or {}
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
            "who": state.get("audit_who", "unknown-key"),
            "scope": state["audit_scope"],
            "action": f"{scope.get('method', '?')} {getattr(route, 'path', scope.get('path'))}",
            "status": status,
            "outcome": "ok" if status < 400 else "refused" if status < 500 else "failed",
            "request_id": request_id.get(),
        }
        entry.update({k: str(params[k]) for k in _TARGETS if k in params})
        if touched.get("face_ids"):
            entry["face_ids"] = sorted(set(touched["face_ids"]))
        if touched.get("negative_ids"):
            entry["negative_ids"] = sorted(set(touched["negative_ids"]))
        audit_log.info("audit", extra={"audit": entry})
        if self.file is not None:
            try:
                self.file.append(entry)
            except OSError:
                audit_log.exception("the audit file %s cannot be written", self.file.path)
