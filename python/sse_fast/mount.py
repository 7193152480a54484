"""sse-fast inside another ASGI application (FastAPI, Starlette...): :class:`SseFast`.

::

    sse = SseFast(auth=who_is_it)              # who_is_it(AuthRequest) -> Identity | None, sync or async
    app = FastAPI(lifespan=sse.lifespan)       # or, in the host's own lifespan: async with sse.lifespan(): ...
    app.mount("/events", sse.asgi)             # /events/sse, /events/api/..., /events/sdk/sse-fast.js
    await sse.publish_json("orders.alice", {...})   # from the host's own handlers: no HTTP round trip

The routes are those of the stand-alone server, under the mount prefix (ASGI's ``root_path``). Starlette gives the
ASGI lifespan to the top application only, never to a mounted one, so the worker (broker, ticker, scheduler) starts
on first use (a request or a publish) and :meth:`SseFast.lifespan` is how the host stops it cleanly (the open streams
get their ``maintenance`` notice, the broker is closed); entering it also starts the worker at once. The admin page
(``/admin``) loads its files by absolute path and works only at the root, not under a prefix.

The auth hook decides who calls every route that has a caller; it sees the canonical path inside sse-fast and the
route's template (:class:`~sse_fast.server.auth.AuthRequest`). It is not asked for the open routes, which answer
whoever reaches them under the mount: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, the SDK and the
admin page's files. A host that wants them private refuses them itself (a middleware on the prefix, or the proxy).

The publishes go straight to the broker in the host's process, as the ``server`` identity of an ``X-API-Key``
caller (an admin, not rate limited), with the HTTP API's validation: bad input raises a ``ValueError``
(:class:`~sse_fast.errors.TopicError` for a topic, ``ValidationFailure`` for the rest, with the code and the message
the HTTP API would answer); an unreachable Redis raises ``BrokerUnavailable``. Both are
:class:`~sse_fast.errors.SseFastError`. They answer what the Python client's calls answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, cast

import msgspec

from sse_fast._core import NORMAL, validate_topic
from sse_fast.client.answers import PublishAnswer
from sse_fast.models import BroadcastRequest, decode, decode_envelope
from sse_fast.scheduler.core import Scheduler
from sse_fast.server.app import App
from sse_fast.server.auth import SERVER_IDENTITY, AuthHook, AuthRequest, Identity
from sse_fast.settings import Settings

__all__ = ["AuthHook", "AuthRequest", "Identity", "SseFast"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class SseFast:
    """sse-fast for mounting in an ASGI application, with an in-process publish API.

    ``settings`` default to ``Settings.from_env()``; ``auth`` is the auth hook that identifies every caller (when
    given, ``SSE_FAST_AUTH``, tokens and API keys are not consulted); ``scheduler`` runs the tasks that clients
    start with commands. One instance is one worker: build it once, at import, like the host's ``app``.
    """

    def __init__(
        self, settings: Settings | None = None, *, auth: AuthHook | None = None, scheduler: Scheduler | None = None
    ) -> None:
        self.app = App(settings or Settings.from_env(), scheduler=scheduler, auth=auth)

    # -- the ASGI side ---------------------------------------------------------------------------------------

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application to mount: ``app.mount("/events", sse.asgi)``."""
        await self.app(cast(dict[str, Any], scope), receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start the worker now and shut it down at the end: ``FastAPI(lifespan=sse.lifespan)``, or
        ``async with sse.lifespan():`` inside the host's own lifespan (``app`` is ignored)."""
        self._start()
        try:
            yield
        finally:
            await self.app.shutdown()

    def _start(self) -> None:
        self.app.startup(asyncio.get_running_loop())  # idempotent: the first request or publish starts it too

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        type: str = "json",
        priority: int = NORMAL,
        require_ack: bool = False,
        ephemeral: bool = False,
        metadata: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        id: str | None = None,
    ) -> PublishAnswer:
        """Publish ``payload`` to ``topic`` as a message of ``type`` (``POST /api/messages`` without HTTP).

        ``id``: an id of your choosing, deduplicated like the HTTP API's (a repeat answers ``duplicate=True`` and
        sends nothing); by default the server makes one.
        """
        validate_topic(topic)
        fields = _fields(type, payload, priority, require_ack, ephemeral, metadata, correlation_id, id)
        return await self._publish(decode_envelope(msgspec.json.encode({**fields, "topic": topic})))

    async def publish_json(self, topic: str, obj: Any, **options: Any) -> PublishAnswer:
        """:meth:`publish` a ``json`` message with ``obj`` as its payload (the options of :meth:`publish`)."""
        return await self.publish(topic, obj, **{**options, "type": "json"})

    async def publish_text(self, topic: str, text: str, **options: Any) -> PublishAnswer:
        """:meth:`publish` a ``text`` message (the options of :meth:`publish`)."""
        return await self.publish(topic, text, **{**options, "type": "text"})

    async def send_to(
        self,
        client_id: str,
        payload: Any,
        *,
        type: str = "json",
        priority: int = NORMAL,
        require_ack: bool = False,
        ephemeral: bool = False,
        metadata: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        id: str | None = None,
    ) -> PublishAnswer:
        """Send ``payload`` to one client (``POST /api/direct/{clientId}`` without HTTP): to each of its streams,
        or into its mailbox while it is offline (``queued``)."""
        fields = _fields(type, payload, priority, require_ack, ephemeral, metadata, correlation_id, id)
        return await self._publish(decode_envelope(msgspec.json.encode({**fields, "target": client_id})))

    async def broadcast(
        self,
        payload: Any,
        *,
        type: str = "json",
        priority: int = NORMAL,
        ephemeral: bool = False,
        metadata: dict[str, Any] | None = None,
        exclude_client_id: str | None = None,
    ) -> PublishAnswer:
        """Send ``payload`` to every connected client but ``exclude_client_id`` (``POST /api/broadcast`` without
        HTTP); ``delivered`` is the connections written to on this worker."""
        fields = _fields(type, payload, priority, False, ephemeral, metadata, None, None)
        body = {"message": fields, "excludeClientId": exclude_client_id}
        request = decode(msgspec.json.encode(body), BroadcastRequest)
        return await self._publish(request.message, exclude=request.exclude_client_id)

    async def _publish(self, envelope: Any, *, exclude: str | None = None) -> PublishAnswer:
        self._start()
        accepted = await self.app.api.accept(SERVER_IDENTITY, envelope, exclude=exclude)
        return PublishAnswer(
            message_id=accepted.message_id,
            delivered=accepted.delivered,
            queued=accepted.queued,
            duplicate=accepted.duplicate,
        )


def _fields(
    type: str,
    payload: Any,
    priority: int,
    require_ack: bool,
    ephemeral: bool,
    metadata: dict[str, Any] | None,
    correlation_id: str | None,
    id: str | None,
) -> dict[str, Any]:
    """An envelope's fields as the HTTP API reads them (camelCase, unset ones left out), to decode and check."""
    fields = {
        "type": type,
        "payload": payload,
        "priority": priority,
        "requireAck": require_ack,
        "ephemeral": ephemeral,
        "metadata": metadata,
        "correlationId": correlation_id,
        "id": id,
    }
    return {k: v for k, v in fields.items() if v is not None}
