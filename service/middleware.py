"""The ASGI layers in front of the routes, outermost first (``install`` puts them in order):

1. ``RequestContext`` (service.metrics): request id, metrics, access log.
2. ``CatchAll``: an unexpected error becomes a 500 with its request id and a metric, and the
   keep-alive connection stays usable (Starlette's own handler re-raises, and uvicorn then
   closes the connection).
3. ``AuditTrail`` (service.audit): one line per write or admin request.
4. ``Authenticate``: the API key is checked from the headers, before any body byte is read and
   before the request counts as in flight; 401/403 at once.
5. ``InflightLimit``: at most N authenticated requests at once (and M per key), else 503.
6. ``Deadline``: a request still running after the limit answers 503 ``timeout``.
7. ``BodyGuard``: the body must arrive within a deadline, above a minimum rate, and under its
   size limit (declared or counted as it streams; a body that is not a multipart upload, such
   as JSON, has a much smaller one): 408 or 413, before anything is spooled or parsed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    AmbiguousCredentials,
    BodyTimeout,
    MarginFaceError,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from service.keys import KeyRing, Principal

log = logging.getLogger("marginface")

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")  # probes: no key, no in-flight slot
PRINCIPAL = "marginface.principal"  # where Authenticate leaves who is calling, in the scope


async def send_error(
    send: Send, exc: MarginFaceError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with the one error body (see service.errors) from inside a middleware."""
    from service.errors import error_response  # the one mapping to HTTP

    response = error_response(exc)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class _StartTracker:
    """Wraps ``send`` to know whether the response has begun (an error body can only be sent
    before it has), and to drop what the app sends after a middleware answered for it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.answered = False  # a middleware sent the response: the app's is dropped

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def answer(self, exc: MarginFaceError) -> None:
        """Send an error now, if nothing was sent yet, and drop the app's own response."""
        if not self.started:
            self.started = True
            await send_error(self._send, exc)
        self.answered = True


class CatchAll:
    """The last resort: an exception no handler took is logged with the request id, counted
    (``on_error``), and answered 500 ``internal_error``; the connection stays usable."""

    def __init__(self, app: ASGIApp, on_error: Any = None) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracker = _StartTracker(send)
        try:
            await self.app(scope, receive, tracker.send)
        except Exception:
            rid = str(scope.get("marginface.request_id", "-"))
            log.exception(
                "unhandled error on %s %s", scope.get("method"), scope.get("path"),
                extra={"request_id": rid},
            )  # fmt: skip
            if self.on_error is not None:
                self.on_error()
            from service.errors import InternalError

            await tracker.answer(
                InternalError(
                    f"an unexpected error occurred; see the server log (request id {rid})"
                )
            )


def required_scope(dependencies: list[Any]) -> str | None:
    """The API-key scope a list of route dependencies requires (a ``required_scope``)."""
    for dependency in dependencies:
        scope = getattr(getattr(dependency, "dependency", None), "required_scope", None)
        if scope is not None:
            return str(scope)
    return None


class ScopeTable:
    """Which scope each route needs, looked up by method and path before the router runs (the
    routers' own dependencies say it: ``service.api.deps.CanRead`` and the like)."""

    def __init__(self, routers: list[Any]) -> None:
        self._routes: list[tuple[Any, set[str], Any, dict[str, Any], str]] = []
        for router in routers:
            for route in router.routes:
                deps = [*getattr(router, "dependencies", []), *getattr(route, "dependencies", [])]
                scope = required_scope(deps)
                if scope is None or not hasattr(route, "methods"):
                    continue
                regex, _, convertors = compile_path(route.path)
                self._routes.append(
                    (regex, set(route.methods), convertors, {"route": route}, scope)
                )

    def lookup(self, method: str, path: str) -> tuple[Any, dict[str, Any], str] | None:
        """(route, path parameters, required scope) of the route a request goes to, or None."""
        for regex, methods, convertors, extra, scope in self._routes:
            found = regex.match(path)
            if found and method in methods:
                try:
                    params = {k: convertors[k].convert(v) for k, v in found.groupdict().items()}
                except (ValueError, KeyError):
                    params = found.groupdict()
                return extra["route"], params, scope
        return None


class Authenticate:
    """Who is calling, decided from the headers alone: a request without a valid key is
    answered 401 before its body is read and before it takes an in-flight slot; a key without
    the route's scope gets 403; two X-API-Key headers are refused (400). The route and its path
    parameters are noted in the scope, so refused attempts are audited like the others."""

    def __init__(
        self, app: ASGIApp, keys: KeyRing, table: ScopeTable, *, disabled: bool = False
    ) -> None:
        self.app = app
        self.keys = keys
        self.table = table
        self.disabled = disabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        found = self.table.lookup(scope.get("method", ""), scope.get("path", ""))
        if found is None:  # an open route (the console, /docs) or no route at all (404/405)
            await self.app(scope, receive, send)
            return
        route, params, required = found
        scope.setdefault("route", route)  # what the audit trail reports, even for a refusal
        scope.setdefault("path_params", params)
        state = scope.setdefault("state", {})
        state["audit_scope"] = required
        if self.disabled:
            state["audit_who"] = "auth-disabled"
            scope[PRINCIPAL] = Principal("auth-disabled", frozenset({"read", "write", "admin"}))
            await self.app(scope, receive, send)
            return
        given = [v for k, v in scope.get("headers") or [] if k == b"x-api-key"]
        state["audit_who"] = "unknown-key"
        try:
            if len(given) > 1:
                raise AmbiguousCredentials(
                    f"{len(given)} X-API-Key headers: send exactly one", headers=len(given)
                )
            principal = self.keys.authenticate(given[0].decode("latin-1") if given else None)
            state["audit_who"] = principal.key_id
            self.keys.require(principal, required)  # type: ignore[arg-type]
        except MarginFaceError as exc:
            await send_error(send, exc)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)


class InflightLimit:
    """Backpressure: past ``limit`` authenticated requests in flight (or ``per_key`` of one
    key), answer 503 ``overloaded`` with Retry-After at once instead of queueing without bound.
    Probes and unauthenticated requests never take a slot (they are answered before)."""

    def __init__(self, app: ASGIApp, limit: int, per_key: int = 0) -> None:
        self.app = app
        self.limit = limit
        self.per_key = per_key
        self.inflight = 0
        self._by_key: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        principal = scope.get(PRINCIPAL)
        key = principal.key_id if principal is not None else ""
        if self.inflight >= self.limit:
            await send_error(
                send,
                Overloaded(
                    f"{self.inflight} requests are in flight (the limit); retry shortly",
                    retry_after_s=1,
                ),
            )
            return
        if self.per_key and key and self._by_key[key] >= self.per_key:
            await send_error(
                send,
                Overloaded(
                    f"key {key!r} has {self._by_key[key]} requests in flight (its limit); "
                    "retry shortly",
                    retry_after_s=1,
                ),
            )
            return
        self.inflight += 1  # one event loop: no lock needed
        self._by_key[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            self._by_key[key] -= 1
            if self._by_key[key] <= 0:
                del self._by_key[key]


class Deadline:
    """Answer 503 ``timeout`` when a request runs past the limit, instead of hanging the client.

    The worker thread of a sync route cannot be killed, but writes are single transactions, so
    an abandoned request either committed or left nothing behind.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracker = _StartTracker(send)
        try:
            await asyncio.wait_for(self.app(scope, receive, tracker.send), self.seconds)
        except TimeoutError:
            await tracker.answer(
                RequestTimeout(f"the request took longer than {self.seconds:g} s", retry_after_s=5)
            )


class BodyGuard:
    """The request body, as it streams: over its limit (by Content-Length at once, or counted
    chunk by chunk) it is 413 ``payload_too_large``; slower than ``min_rate_bytes_s`` (after a
    grace period) or longer than ``timeout_s`` in all, 408 ``request_timeout``. Either is
    answered right away, before the app spools another byte; the app then sees a disconnect.
    Only multipart uploads may use ``max_bytes``: any other body (JSON, a form) is parsed whole
    in memory, and no route takes more than ``max_plain_bytes`` of it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        max_plain_bytes: int | None = None,
        overrides: dict[str, int] | None = None,
        timeout_s: float = 60.0,
        min_rate_bytes_s: float = 1024.0,
        grace_s: float = 5.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_plain_bytes = max_plain_bytes
        self.overrides = overrides or {}  # path -> limit (zip uploads are bigger)
        self.timeout_s = timeout_s
        self.min_rate = min_rate_bytes_s
        self.grace_s = grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope.get("path", ""), self.max_bytes)
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        if self.max_plain_bytes is not None and not multipart:
            limit = min(limit, self.max_plain_bytes)
        declared = headers.get(b"content-length")
        too_large = PayloadTooLarge(
            f"the request body is over the limit of {limit} bytes", limit=limit
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, too_large)
            return
        tracker = _StartTracker(send)
        started = time.monotonic()
        received = 0
        done = False

        async def guarded_receive() -> Message:
            nonlocal received, done
            if tracker.answered:
                return {"type": "http.disconnect"}
            if done:
                return await receive()
            elapsed = time.monotonic() - started
            # wait no longer than the body deadline, nor than the rate allows
            allowed = (
                max(self.grace_s, received / self.min_rate) if self.min_rate > 0 else self.timeout_s
            )
            wait = min(self.timeout_s, allowed + 1.0) - elapsed
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.001, wait))
            except TimeoutError:
                await tracker.answer(
                    BodyTimeout(
                        f"the request body did not arrive in time ({received} bytes in "
                        f"{time.monotonic() - started:.1f} s; at least {self.min_rate:g} bytes/s "
                        f"and {self.timeout_s:g} s in all)"
                    )
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await tracker.answer(too_large)
                    return {"type": "http.disconnect"}
                done = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, tracker.send)
