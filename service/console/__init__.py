"""The web console: static files served at /console, under a policy that lets the page load
nothing from anywhere but the service itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

CONSOLE_DIR = Path(__file__).parent / "static"
CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)


class ConsoleFiles(StaticFiles):
    """The console's static files, with a policy that lets the page load nothing from elsewhere."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def mount_console(app: FastAPI) -> None:
    """Serve the console at /console/, and its icon at /favicon.ico (browsers ask there)."""
    icon = (CONSOLE_DIR / "favicon.svg").read_bytes()

    def favicon() -> Response:
        return Response(
            icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
        )

    app.add_api_route("/favicon.ico", favicon, include_in_schema=False)
    app.mount("/console", ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
