"""The admin page (``GET /admin``) and what only it needs: ``GET /api/admin/recent``, the tail of the replay log.

The page is static (``sse_fast/static/admin.html``, ``admin.js``, ``admin.css``, inside the Python package, so the
wheel ships it and no build runs at run time) and is built on the browser SDK, which it imports from
``/sdk/sse-fast.js``. Anyone may load it; everything it shows comes from the admin endpoints (``/api/connections``,
``/api/tasks?all=true``, ``/api/admin/recent``) and ``/metrics``, with the credential entered on the page (a JWT
with ``admin: true`` or an API key), which the page keeps in ``sessionStorage`` at most and never puts in a URL.

The page and its files are answered with a strict Content-Security-Policy (scripts and styles from this origin
only, no inline script, nothing framed), ``X-Frame-Options: DENY`` and ``nosniff``; the page writes every value
with ``textContent``, never as HTML.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

from sse_fast.broker import Broker
from sse_fast.errors import ErrorBody
from sse_fast.models import RecentAnswer
from sse_fast.server.auth import Authenticator
from sse_fast.server.http import HttpError, Request, Response, Route, api_route, json_response, parse_limit
from sse_fast.settings import Settings

__all__ = ["ADMIN_FILES", "CSP", "AdminService"]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page's Content-Security-Policy: its own scripts, styles and API only; no inline script; never framed."""
_SECURITY_HEADERS: Final = [
    ("content-security-policy", CSP),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
]
ADMIN_FILES: Final = {
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}
"""The files of ``/admin/{file}`` and their content types (the page itself is ``/admin``)."""
_HTML: Final = "text/html; charset=utf-8"
_DEFAULT_LIMIT: Final = 50
_E = ErrorBody


@functools.cache
def _static(name: str) -> bytes:
    return (resources.files("sse_fast") / "static" / name).read_bytes()


def _limit(raw: str | None, cap: int) -> int:
    """``?limit=N``: 1 or more (else 400 ``invalid_limit``), capped at ``SSE_FAST_ADMIN_RECENT_MAX``."""
    return parse_limit(raw, default=min(_DEFAULT_LIMIT, cap), least=1, cap=cap)


class AdminService:
    """``GET /admin``, ``GET /admin/{file}`` and ``GET /api/admin/recent``."""

    def __init__(self, settings: Settings, broker: Broker, auth: Authenticator) -> None:
        self.settings = settings
        self.broker = broker
        self.auth = auth

    def routes(self) -> list[Route]:
        """The page, its files (anyone may load them) and the tail of the log (admin)."""
        limit = (("limit", f"How many messages (default {_DEFAULT_LIMIT}), capped at SSE_FAST_ADMIN_RECENT_MAX."),)
        return [
            Route("GET", "/admin", self.admin_page, "The admin page (its data needs admin rights)", None,
                  {200: "text/html"}, security=()),
            Route("GET", "/admin/{file}", self.admin_file, "A file of the admin page (`admin.js`, `admin.css`)", None,
                  {200: "text/javascript", 404: _E}, security=()),
            api_route("GET", "/api/admin/recent", self.admin_recent,
                      "The newest messages of the replay log, every scope, newest first (admin)", None,
                      {200: RecentAnswer, 503: _E}, query=limit),
        ]  # fmt: skip

    async def admin_page(self, req: Request) -> Response:
        """``GET /admin``: the page, with its security headers."""
        return Response(200, _static("admin.html"), [("content-type", _HTML), *_SECURITY_HEADERS])

    async def admin_file(self, req: Request) -> Response:
        """``GET /admin/{file}``: the page's script and style sheet."""
        name = req.path_params["file"]
        content_type = ADMIN_FILES.get(name)
        if content_type is None:
            raise HttpError(404, "not_found", f"no file {name} here (the admin page is /admin)")
        return Response(200, _static(name), [("content-type", content_type), *_SECURITY_HEADERS])

    async def admin_recent(self, req: Request) -> Response:
        """``GET /api/admin/recent?limit=N``: 401 without a credential (jwt), 403 ``admin_required`` unless admin."""
        caller = self.auth.caller(req)
        if not caller.admin:
            raise HttpError(403, "admin_required", "the tail of the replay log needs admin rights")
        limit = _limit(req.query.get("limit"), self.settings.admin_recent_max)
        return json_response(200, RecentAnswer(messages=await self.broker.recent(limit), limit=limit))
