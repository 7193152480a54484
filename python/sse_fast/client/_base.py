"""What the parts of the client share: the one object they make up, and the helpers they all use.

:class:`Client` is one object assembled from one class per concept (:mod:`.connection`, :mod:`.outbox`,
:mod:`.dispatch`, :mod:`.tasks`). :class:`_ClientBase` declares the state more than one part reads and the methods
through which a part calls another, so that each part type-checks on its own (the declarations do nothing at
runtime). The helpers read error answers and ``Retry-After``, and call sync-or-async callbacks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpx
import msgspec

from sse_fast.errors import AuthError, ServerError
from sse_fast.models import Envelope

if TYPE_CHECKING:
    from sse_fast.client.answers import PublishAnswer
    from sse_fast.client.dispatch import _Listener

_A = TypeVar("_A")

Token = str | Callable[[], "str | Awaitable[str]"]
"""A bearer token, or a function (sync or async) that returns one: called before the first request and again when
the server answers 401, before the client gives up."""

log = logging.getLogger("sse_fast.client")

Message = Envelope
"""A message as the client receives and sends it: the protocol's envelope (:class:`sse_fast.models.Envelope`)."""

_MAX_ERROR_BODY: Final = 64 << 10
_MAX_RETRY_AFTER: Final = 3600.0

_json = msgspec.json.Encoder()


class _ClientBase:
    """The state and the methods the parts of :class:`~sse_fast.client.Client` use across each other."""

    base_url: str
    client_id: str
    connection_timeout: float
    _http: httpx.AsyncClient
    _headers: dict[str, str]
    _token: Token | None
    _token_ready: bool
    _queue_size: int
    _counts: dict[str, int]

    _closed: bool
    _fatal: BaseException | None
    _stream_wanted: bool
    _stopped: bool
    _listeners: set[_Listener]

    if TYPE_CHECKING:
        # The client (sse_fast.client._client)
        def _spawn(self, awaitable: Awaitable[Any]) -> None: ...
        def _start_workers(self) -> None: ...
        def _fail_pending(self, error: BaseException, *, ended: bool) -> None: ...

        # The connection (sse_fast.client.connection)
        async def connect(self) -> None: ...
        async def _until_connected(self) -> None: ...

        # The dispatcher (sse_fast.client.dispatch)
        async def _hand_over(self, message: Envelope) -> None: ...
        def _wants_heartbeats(self) -> bool: ...
        def _is_duplicate(self, message: Envelope) -> bool: ...

        # The outbound queue (sse_fast.client.outbox)
        async def send(self, message: Envelope) -> PublishAnswer: ...
        async def _send_envelope(self, message: Envelope, answer: type[_A]) -> _A: ...
        async def _submit(self, path: str, body: bytes, priority: int, answer: type[_A]) -> _A: ...

        # Tasks (sse_fast.client.tasks)
        def _route_task_event(self, message: Envelope) -> None: ...

    # -- the token -------------------------------------------------------------------------------------------

    async def _ensure_token(self) -> None:
        """Put the token in the headers, calling the token function the first time."""
        if not self._token_ready:
            await self._refresh_token()

    async def _refresh_token(self) -> bool:
        """Call the token function again (after a 401); False when the token is a plain string (nothing to do)."""
        token = self._token
        if token is None or (isinstance(token, str) and self._token_ready):
            return False
        value = token if isinstance(token, str) else token()
        if inspect.isawaitable(value):
            value = await value
        self._headers["Authorization"] = f"Bearer {value}"
        self._token_ready = True
        return not isinstance(token, str)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None  # an HTTP date: rare from this server; the backoff applies instead


def _error_fields(body: bytes, status: int) -> tuple[str, str, Any]:
    """``(message, code, detail)`` of an error answer, whatever the body holds."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        message, code = data.get("error"), data.get("code")
        if isinstance(message, str) and isinstance(code, str):
            return message, code, data.get("detail")
    return f"HTTP {status}", f"http_{status}", None


def _answer_error(status: int, body: bytes) -> ServerError | AuthError:
    message, code, detail = _error_fields(body[:_MAX_ERROR_BODY], status)
    if status in (401, 403):
        return AuthError(message, status=status, code=code)
    return ServerError(message, status=status, code=code, detail=detail)


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        await result
