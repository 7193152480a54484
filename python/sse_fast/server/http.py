"""What the routes see of HTTP, the same under RSGI and ASGI: a request, a response, a stream.

Errors are :class:`~sse_fast.errors.HttpError` (importable from here too), answered by ``Api.handle``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

import msgspec

from sse_fast.errors import ErrorBody, HttpError
from sse_fast.streams import Sink

if TYPE_CHECKING:
    from sse_fast.server.auth import Identity

__all__ = [
    "HttpError",
    "Request",
    "Response",
    "Route",
    "StreamResponse",
    "api_route",
    "json_response",
    "parse_limit",
    "parse_query",
]

_json = msgspec.json.Encoder()
JSON_TYPE = "application/json"


@dataclass(slots=True)
class Response:
    """A complete answer."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class StreamResponse:
    """An SSE stream: the adapter starts the response with ``headers``, then calls ``open(sink)`` at once.

    ``open`` registers the connection and writes its first bytes; it returns the connection id, which the adapter
    hands to ``closed`` when the client goes away. The adapter calls ``release`` (idempotent) once ``open`` returned
    or failed, or instead of it when the response could not start: it frees the connection slot taken for this
    stream, if ``open`` did not already.
    """

    headers: list[tuple[str, str]]
    open: Callable[[Sink], Awaitable[int]]
    closed: Callable[[int], None]
    release: Callable[[], None] = field(default=lambda: None)


Handler = Callable[["Request"], Awaitable["Response | StreamResponse"]]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: method, path template (``{name}`` segments), handler, and what OpenAPI says of it.

    ``request``, ``responses``, ``query``, ``headers`` and ``security`` are those of
    :class:`sse_fast.models.Route`; the handler's name is the operation id.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    request: Any = None
    responses: Mapping[int, Any] = field(default_factory=dict)
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    security: Sequence[Mapping[str, Sequence[str]]] | None = None
    template: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # The template as a list when it has no `{name}` segment (most routes): matched by one list comparison.
    literal: list[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = tuple(self.path.strip("/").split("/"))
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "literal", None if any(s.startswith("{") for s in template) else list(template))

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters when ``segments`` fit this route's template."""
        if self.literal is not None:
            return {} if segments == self.literal else None
        if len(self.template) != len(segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.template, segments, strict=True):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


_CALLER_QUERY: Final = (
    (
        "clientId",
        "Who the caller is with SSE_FAST_AUTH=none (after X-Client-Id); with jwt, the token subject, if given.",
    ),
)
_CALLER_HEADERS: Final = (
    ("X-Client-Id", "Who the caller is with SSE_FAST_AUTH=none; with jwt, the token subject, if given."),
)
# Who the caller is (PROTOCOL.md section 6): 400 a malformed clientId, 401 no or a bad credential, 403 a clientId that
# is not the token's subject or a grant it lacks. A JSON body: 400 malformed or empty, 413 too large, 415 not JSON,
# 422 against the schema.
_CALLER_ERRORS: Final = {400: ErrorBody, 401: ErrorBody, 403: ErrorBody}
_BODY_ERRORS: Final = {400: ErrorBody, 413: ErrorBody, 415: ErrorBody, 422: ErrorBody}


def api_route(
    method: str,
    path: str,
    handler: Handler,
    summary: str,
    request: Any = None,
    responses: Mapping[int, Any] | None = None,
    *,
    query: tuple[tuple[str, str], ...] = (),
) -> Route:
    """A route of the HTTP API, which identifies its caller: it takes ``X-Client-Id`` and ``clientId`` and may
    answer 400, 401 and 403; with a ``request`` body, 413, 415 and 422 too. ``responses`` adds the rest."""
    errors = _CALLER_ERRORS | (_BODY_ERRORS if request is not None else {})
    answers = errors | dict(responses or {})
    return Route(method, path, handler, summary, request, answers, _CALLER_QUERY + query, _CALLER_HEADERS)


def json_response(status: int, body: Any, *, headers: list[tuple[str, str]] | None = None) -> Response:
    """Encode ``body`` (a msgspec Struct, dict, list, ...) as a JSON answer."""
    return Response(status, _json.encode(body), [("content-type", JSON_TYPE), *(headers or [])])


def parse_limit(raw: str | None, *, default: int, least: int, cap: int) -> int:
    """A ``?limit=N`` query value: ``default`` when absent or empty, else a whole number of at least ``least`` in
    ASCII digits (else 400 ``invalid_limit``; ``str.isdigit`` alone admits ``'¹'``, which ``int`` refuses), capped at
    ``cap``. A long run of digits is capped before ``int`` sees it (``int`` refuses more than 4,300 digits)."""
    if raw is None or raw == "":
        return default
    digits = raw.lstrip("0")
    if not raw.isascii() or not raw.isdigit() or (len(digits) < 10 and int(digits or "0") < least):
        detail = f"limit must be a whole number of at least {least}"
        raise HttpError(400, "invalid_limit", detail, {"limit": raw[:32]})
    return cap if len(digits) >= 10 else min(int(digits or "0"), cap)


def parse_query(query_string: str) -> dict[str, str]:
    """The query as a dict; a repeated key keeps its last value (as browsers' URLSearchParams.get does not)."""
    if not query_string:  # most API requests have none
        return {}
    return dict(parse_qsl(query_string, keep_blank_values=True))


class Request:
    """One HTTP request, interface-neutral. ``headers`` names are lower-case.

    ``path`` is the path inside sse-fast; ``root_path`` the prefix it is mounted at (ASGI's ``root_path``; empty when
    not mounted). ``identity`` is what the auth hook said of the caller, when there is a hook
    (:meth:`sse_fast.server.auth.Authenticator.resolve`); ``caller`` who the request was identified as, once a
    route did (the access log's client), whatever the auth.

    ``chunks`` yields the body; ``whole``, when the interface has it, reads the whole body in one call, for a body
    the server frames by its ``Content-Length`` (see :meth:`body`).
    """

    __slots__ = (
        "_chunks",
        "_whole",
        "caller",
        "client",
        "headers",
        "identity",
        "method",
        "path",
        "path_params",
        "query",
        "root_path",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        client: str,
        chunks: Callable[[], AsyncIterator[bytes]],
        *,
        root_path: str = "",
        whole: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.client = client
        self.root_path = root_path
        self.path_params: dict[str, str] = {}
        self.identity: Identity | None = None
        self.caller: Identity | None = None
        self._chunks = chunks
        self._whole = whole

    async def body(self, limit: int) -> bytes:
        """The body, refusing (413) a declared or actual size over ``limit`` without reading further."""
        declared = self.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HttpError(400, "bad_content_length", "Content-Length is not a number")
            if int(declared) > limit:
                raise _too_large(limit)
            if self._whole is not None and "transfer-encoding" not in self.headers:
                # The server reads no more than the declared length (granian: hyper frames an HTTP/1 body by it, and
                # drops it when Transfer-Encoding is set; h2 refuses more DATA than it declares), so one read of the
                # whole body is bounded too, and costs far less than a loop over chunks (bench/ingest.py).
                body = await self._whole()
                if len(body) > limit:
                    raise _too_large(limit)
                return body
        parts: list[bytes] = []
        size = 0
        async for chunk in self._chunks():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    async def json_body(self, limit: int) -> bytes:
        """The body of a JSON request: 415 unless the content type is JSON, 400 when empty, 413 when too large."""
        content_type = self.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media != JSON_TYPE and not (media.startswith("application/") and media.endswith("+json")):
            raise HttpError(415, "unsupported_media_type", "the body must be JSON (content-type: application/json)")
        body = await self.body(limit)
        if not body.strip():
            raise HttpError(400, "empty_body", "the request body is empty")
        return body


def _too_large(limit: int) -> HttpError:
    return HttpError(413, "body_too_large", f"the request body is larger than {limit} bytes", {"limit": limit})
