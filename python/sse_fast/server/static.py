"""The browser SDK, served by the server: ``GET /sdk/sse-fast.js`` (and ``/sdk/sse-fast@<version>.js``).

The file is ``sse_fast/static/sse-fast.js``, inside the Python package, so the wheel ships it and a server installed
with ``pip install sse-fast`` serves it without Node. It is the one source of the SDK: the npm package copies it when
it is packed. Its SRI hash (``sha384-...``, :func:`sdk_integrity`) is its strong ETag, and the README shows it.

``/sdk/sse-fast.js`` is revalidated on every use (``no-cache`` and the ETag: a 304 costs one round trip and no
body); ``/sdk/sse-fast@<version>.js`` (this server's version only) is cached for a year as ``immutable``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib import resources

from sse_fast._core import __version__
from sse_fast.errors import ErrorBody
from sse_fast.server.http import HttpError, Request, Response, Route

__all__ = ["SDK_FILE", "StaticFiles", "sdk_integrity", "sdk_source"]

SDK_FILE = "sse-fast.js"
_JS = "text/javascript; charset=utf-8"
_REVALIDATE = "no-cache"
_IMMUTABLE = "public, max-age=31536000, immutable"


@functools.cache
def sdk_source() -> bytes:
    """The SDK file's bytes, as the package holds them."""
    return (resources.files("sse_fast") / "static" / SDK_FILE).read_bytes()


@functools.cache
def sdk_integrity() -> str:
    """The SDK's Subresource Integrity value: ``sha384-<base64>``."""
    return "sha384-" + base64.b64encode(hashlib.sha384(sdk_source()).digest()).decode()


class StaticFiles:
    """``GET /sdk/{file}``."""

    def routes(self) -> list[Route]:
        """The SDK's route (anyone may read it)."""
        summary = f"The browser SDK: `{SDK_FILE}` (revalidated by ETag) or `sse-fast@<version>.js` (immutable)"
        return [
            Route("GET", "/sdk/{file}", self.sdk, summary, None, {200: "text/javascript", 404: ErrorBody},
                  security=()),
        ]  # fmt: skip

    async def sdk(self, req: Request) -> Response:
        """The SDK file, with its ETag; 304 when the caller holds it already."""
        name = req.path_params["file"]
        if name == SDK_FILE:
            cache = _REVALIDATE
        elif name == f"sse-fast@{__version__}.js":
            cache = _IMMUTABLE
        else:
            raise HttpError(404, "not_found", f"no file {name} here (the SDK is /sdk/{SDK_FILE})")
        etag = f'"{sdk_integrity()}"'
        headers = [("etag", etag), ("cache-control", cache)]
        if etag in (tag.strip() for tag in req.headers.get("if-none-match", "").split(",")):
            return Response(304, b"", headers)
        return Response(200, sdk_source(), [("content-type", _JS), *headers])
