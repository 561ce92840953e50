"""CompreFace's REST API (v1), served under ``/api/v1/`` as a thin adapter over
``service.recognition``: its paths, parameters, response shapes and error body
(``{"message", "code"}``), so CompreFace's SDKs and integrations work unchanged. What differs
and why: docs/compreface.md."""

from __future__ import annotations

from service.api.compreface import recognition, services
from service.api.compreface.errors import CompreFaceErrors

#: registered one by one (the scope table reads each router's own routes)
routers = [recognition.router, services.router]

__all__ = ["CompreFaceErrors", "routers"]
