"""The endpoints of PROTOCOL.md sections 2, 3, 5 and 6, and the table that routes to them.

Each handler takes a :class:`~sse_fast.server.http.Request` and returns a
:class:`~sse_fast.server.http.Response` (or, for ``GET /sse``, a :class:`~sse_fast.server.http.StreamResponse`);
errors are raised as :class:`~sse_fast.errors.HttpError` (or a subclass: ``AuthFailure``, ``ValidationFailure``,
``SchedulerError``) and answered as JSON by :meth:`Api.handle`, the one place that does it. Nothing here knows
whether RSGI or ASGI carries the request.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import msgspec

from sse_fast._core import __version__, validate_topic
from sse_fast.broker import Accepted, Broker
from sse_fast.errors import BrokerUnavailable, ErrorBody, TopicError
from sse_fast.logs import AccessLog, quoted_path
from sse_fast.models import (
    CLIENT_ID_PATTERN,
    CLIENT_ID_RULE,
    AckAnswer,
    AckRequest,
    BroadcastAnswer,
    BroadcastRequest,
    CommandAnswer,
    ConnectionInfo,
    DeliveryStatus,
    DuplicateAnswer,
    Envelope,
    HealthAnswer,
    MessageStatus,
    PresenceAnswer,
    PresenceScope,
    PublishAnswer,
    ReadyAnswer,
    SubscriptionsAnswer,
    SubscriptionsRequest,
    TaskRecord,
    TasksAnswer,
    decode,
    decode_envelope,
    new_message_id,
    openapi_schema,
)
from sse_fast.models import Route as Operation
from sse_fast.server.admin import AdminService
from sse_fast.server.auth import Authenticator, Identity, canonical_path
from sse_fast.server.commands import CommandService
from sse_fast.server.handshake import Handshake, cursor_of
from sse_fast.server.http import (
    HttpError,
    Request,
    Response,
    Route,
    StreamResponse,
    api_route,
    json_response,
    parse_limit,
)
from sse_fast.server.limits import PresenceLimits, PublishLimits
from sse_fast.server.metrics import Metrics
from sse_fast.server.static import StaticFiles
from sse_fast.server.tickets import TicketService
from sse_fast.settings import Settings
from sse_fast.streams import Sink, Streams

__all__ = ["PRESENCE_LIMIT", "PRESENCE_MAX_LIMIT", "Api"]

log = logging.getLogger("sse_fast.server.routes")

_OPENAPI_DESCRIPTION = (
    "Server-Sent Events with typed, prioritised messages (docs/protocol.md). Every error answer is "
    "`{error, code, detail}` with the codes of section 7."
)
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)
_TOPICS_REFUSED: Final = frozenset({"topic_too_deep", "topics_too_long"})
"""The refusals of :meth:`Streams.bound_topics` that ``sse_fast_topics_refused_total`` counts."""
PRESENCE_LIMIT: Final = 100
"""How many clients ``GET /api/presence`` lists when ``limit`` is not given."""
PRESENCE_MAX_LIMIT: Final = 1000
"""The most clients ``GET /api/presence`` lists (a larger ``limit`` is capped); the counts are always exact."""
_SCOPES: Final[tuple[PresenceScope, ...]] = ("node", "cluster")
SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


def _duplicate(accepted: Accepted) -> Response:
    """The answer to a message id this source already used within the dedupe window."""
    return json_response(200, DuplicateAnswer(message_id=accepted.message_id))


# -- what /openapi.json says beyond the types ---------------------------------------------------------------------

_E = ErrorBody
# A publish: 409 an id another source's requireAck message holds, 413 a message too large for a connection queue,
# 429 the caller's publish rate spent (server/limits.py), 503 the broker (Redis) unreachable.
_PUBLISH_ERRORS: Final = {409: _E, 413: _E, 429: _E, 503: _E}
# A command to the scheduler: 404 unknown task, 409 finished or not paused, 429 queue full, 503 shutting down or
# the task's node unreachable, 504 its node did not answer.
_TASK_ERRORS: Final = {404: _E, 409: _E, 429: _E, 503: _E, 504: _E}
_STREAM_QUERY: Final = (
    ("clientId", "Your clientId, required with SSE_FAST_AUTH=none; with jwt, the token subject (may be left out)."),
    ("topics", "Comma-separated topic patterns (`*` one segment, a final `>` one or more); at most 64."),
    ("lastEventId", "The last cursor seen, to resume (for browsers: the same as the Last-Event-ID header)."),
    ("token", "The JWT, for browsers (EventSource cannot send Authorization); never logged."),
    ("ticket", "A one-time ticket from POST /api/tickets: the identity and grants of the token it came from."),
)
_PRESENCE_QUERY: Final = (
    ("topic", "The topic (a concrete one, no wildcard): required."),
    ("scope", "`cluster` (default: every live node, with Redis) or `node` (the worker that answers)."),
    (
        "limit",
        f"How many clients to list, by clientId (default {PRESENCE_LIMIT}, capped at {PRESENCE_MAX_LIMIT}); "
        "0: the counts only.",
    ),
)
_STREAM_HEADERS: Final = (
    ("Last-Event-ID", "The last cursor seen: the stream replays what came after it, then goes live."),
    ("Authorization", "`Bearer <jwt>` (the bearerAuth scheme), with SSE_FAST_AUTH=jwt."),
)
_SECURITY_SCHEMES: Final = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "SSE_FAST_AUTH=jwt: the token's `sub` is the clientId; its claims `topics`, `publish`, "
        "`direct` and `admin` are the grants. On GET /sse the `token` query parameter may carry it instead.",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "One of SSE_FAST_API_KEYS: an admin publisher called `server`; the HTTP API only.",
    },
}
"""The security schemes of ``/openapi.json``."""
_API_SECURITY: Final[Sequence[Mapping[str, Sequence[str]]]] = ({"bearerAuth": []}, {"apiKeyAuth": []}, {})
"""What admits a caller to the HTTP API: a token, an API key, or nobody (``{}``) with SSE_FAST_AUTH=none."""
_STREAM_SECURITY: Final[Sequence[Mapping[str, Sequence[str]]]] = ({"bearerAuth": []}, {})
"""What admits a caller to ``GET /sse``: a token (header or ``token`` query), or nobody with SSE_FAST_AUTH=none."""
_OPEN: Final[Sequence[Mapping[str, Sequence[str]]]] = ()
"""Operations anyone may call."""
_EXPOSE: Final = ("access-control-expose-headers", "retry-after")
"""A cross-origin page reads only safelisted answer headers unless told: the SDK waits for ``Retry-After``."""


def _error_answer(err: HttpError) -> Response:
    """The one place an error becomes an answer: ``{"error", "code", "detail"}`` with its status and headers."""
    return json_response(err.status, err.body(), headers=err.headers)


def _no_topic(command: Envelope) -> None:
    """A command goes to the scheduler or to one ``target``, never to a topic: 422 ``topic_not_allowed``."""
    if command.topic is not None:
        raise HttpError(
            422,
            "topic_not_allowed",
            "a command goes to the scheduler (no target) or to one client (target), never to a topic",
            {"path": "$.topic"},
        )


def _client_id(value: str, what: str = "clientId") -> str:
    if not _CLIENT_ID.fullmatch(value):
        raise HttpError(400, "invalid_client_id", f"{what} must be {CLIENT_ID_RULE}")
    return value


def _presence_topic(raw: str | None) -> str:
    """``?topic=``: a concrete topic (no wildcard), else 400 ``invalid_topic``."""
    if not raw:
        raise HttpError(400, "invalid_topic", "the topic query parameter is required")
    try:
        validate_topic(raw)
    except TopicError as err:
        raise HttpError(400, "invalid_topic", str(err), {"topic": raw[:128]}) from None
    return raw


def _presence_scope(raw: str | None) -> PresenceScope:
    """``?scope=``: ``cluster`` (default) or ``node``, else 400 ``invalid_scope``."""
    for scope in _SCOPES:
        if raw == scope:
            return scope
    if raw is None or raw == "":
        return "cluster"
    raise HttpError(400, "invalid_scope", "scope must be node or cluster", {"scope": raw[:32]})


def _presence_limit(raw: str | None) -> int:
    """``?limit=``: 0 or more (else 400 ``invalid_limit``), capped at :data:`PRESENCE_MAX_LIMIT`."""
    return parse_limit(raw, default=PRESENCE_LIMIT, least=0, cap=PRESENCE_MAX_LIMIT)


class Api:
    """Every endpoint of one worker, bound to its settings, broker, streams, authenticator and scheduler."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker,
        streams: Streams,
        auth: Authenticator,
        commands: CommandService,
        metrics: Metrics,
        handshake: Handshake,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.streams = streams
        self._remove_stream = streams.remove  # one bound method, held by every stream's sink
        self.auth = auth
        self.commands = commands
        self.metrics = metrics
        self.handshake = handshake
        self.tickets = TicketService(settings, broker, auth)
        self.static = StaticFiles()
        self.admin = AdminService(settings, broker, auth)
        metrics.add_source(self.tickets.store.counters)
        self.limits = PublishLimits(settings)
        self.access = AccessLog(settings.access_log)
        metrics.add_source(self.limits.counters)
        self.presence_limits = PresenceLimits(settings)
        metrics.add_source(self.presence_limits.counters)
        self.routes = self._routes()
        self._openapi: bytes | None = None

    def _routes(self) -> list[Route]:
        # A command (to /api/commands, or an envelope of type command to /api/messages) goes to the scheduler, which
        # answers 202 CommandAnswer (execute), or 200 with a task record, the caller's tasks, or a repeat; an
        # envelope of type ack to /api/messages answers 200 AckAnswer.
        commanded = (DuplicateAnswer, CommandAnswer, TaskRecord, TasksAnswer)
        errors = _PUBLISH_ERRORS | _TASK_ERRORS
        publish = {202: (PublishAnswer, CommandAnswer), 200: (AckAnswer, *commanded), **errors}
        command = {202: (PublishAnswer, CommandAnswer), 200: commanded, **errors}
        return [
            Route("GET", "/sse", self.stream, "Open the event stream (PROTOCOL.md section 2)", None,
                  {200: "text/event-stream", 400: _E, 401: _E, 403: _E, 503: _E},
                  query=_STREAM_QUERY, headers=_STREAM_HEADERS, security=_STREAM_SECURITY),
            api_route("POST", "/api/messages", self.publish, "Publish a message", Envelope, publish),
            api_route("POST", "/api/direct/{clientId}", self.direct, "Publish to one client", Envelope,
                      {202: PublishAnswer, 200: DuplicateAnswer, **_PUBLISH_ERRORS}),
            api_route("POST", "/api/broadcast", self.broadcast, "Publish to everyone", BroadcastRequest,
                      {202: BroadcastAnswer, 200: DuplicateAnswer, **_PUBLISH_ERRORS}),
            api_route("POST", "/api/commands", self.command, "Send a command (the scheduler)", Envelope, command),
            api_route("POST", "/api/ack", self.ack, "Acknowledge messages", AckRequest, {200: AckAnswer, 503: _E}),
            api_route("POST", "/api/subscriptions", self.subscriptions,
                      "Change the topics of a live stream (its owner or an admin)", SubscriptionsRequest,
                      {200: SubscriptionsAnswer, 404: _E, 503: _E, 504: _E}),
            api_route("GET", "/api/messages/{id}", self.message_status, "Delivery status of a requireAck message",
                      None, {200: MessageStatus, 404: _E, 503: _E}),
            api_route("GET", "/api/connections", self.connections,
                      "Live connections (of the cluster, with Redis; admin)", None,
                      {200: list[ConnectionInfo], 503: _E}),
            api_route("GET", "/api/presence", self.presence,
                      "Who receives a topic now, and how many (admin, or a topics grant covering it)", None,
                      {200: PresenceAnswer, 429: _E, 503: _E}, query=_PRESENCE_QUERY),
            *self.commands.routes(),
            *self.tickets.routes(),
            *self.static.routes(),
            *self.admin.routes(),
            Route("GET", "/healthz", self.healthz, "Liveness", None, {200: HealthAnswer}, security=_OPEN),
            Route("GET", "/readyz", self.readyz, "Readiness (broker reachable, accepting streams)", None,
                  {200: ReadyAnswer, 503: ReadyAnswer}, security=_OPEN),
            Route("GET", "/metrics", self.metrics_text, "Prometheus metrics", None, {200: "text/plain"},
                  security=_OPEN),
            Route("GET", "/openapi.json", self.openapi, "This document", None,
                  {200: {"type": "object", "description": "An OpenAPI 3.1 document."}}, security=_OPEN),
        ]  # fmt: skip

    # -- dispatch --------------------------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response | StreamResponse:
        """Route ``req`` and turn every failure into a JSON error answer; never raises. The access log, when it is
        on, records the answer (a stream as 200 when it opens)."""
        if not self.access.enabled:
            return await self._answer(req)
        started = time.perf_counter()
        answer = await self._answer(req)
        status = answer.status if isinstance(answer, Response) else 200
        self.access.record(
            method=req.method,
            path=req.path,
            query=req.query,
            caller=req.caller.client_id if req.caller is not None else None,
            peer=req.client,
            status=status,
            started=started,
        )
        return answer

    async def _answer(self, req: Request) -> Response | StreamResponse:
        try:
            if req.method == "OPTIONS":
                return self._preflight(req)
            answer = await self._dispatch(req)
        except HttpError as err:  # every refusal, whichever module raised it (sse_fast.errors)
            answer = _error_answer(err)
        except Exception:
            log.exception("unhandled error in %s %s", req.method, quoted_path(req.path))
            answer = _error_answer(HttpError(500, "internal_error", "the server failed to handle this request"))
        answer.headers.extend(self._cors(req))
        return answer

    async def _dispatch(self, req: Request) -> Response | StreamResponse:
        segments = canonical_path(req.path)[1:].split("/")
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method != req.method:
                allowed.append(route.method)
                continue
            req.path_params = params
            # The open routes (health, the SDK...) have no caller: no auth hook for them. Without a hook resolve() does
            # nothing, and is not called (a coroutine less per request).
            if route.security != () and self.auth.hook is not None:
                await self.auth.resolve(req, route.path)
            return await route.handler(req)
        if allowed:
            allow = ", ".join(sorted(set(allowed)))
            raise HttpError(405, "method_not_allowed", f"{req.method} is not allowed here", headers=[("allow", allow)])
        raise HttpError(404, "not_found", f"no route for {req.path}")

    def _cors(self, req: Request) -> list[tuple[str, str]]:
        """CORS headers: a listed origin is reflected with credentials (and ``Vary: Origin``); ``*`` is answered as
        a literal ``*`` without credentials, so that any site may read but none with the user's cookies. Either way
        the page may read ``Retry-After`` (of a 429 or 503), which the SDK honours."""
        origin = req.headers.get("origin")
        allowed = self.settings.cors_origins
        if not origin or not allowed:
            return []
        if "*" in allowed:
            return [("access-control-allow-origin", "*"), _EXPOSE]
        if origin not in allowed:
            return []
        return [
            ("access-control-allow-origin", origin),
            ("vary", "Origin"),
            ("access-control-allow-credentials", "true"),
            _EXPOSE,
        ]

    def _preflight(self, req: Request) -> Response:
        headers = self._cors(req)
        if headers:
            headers += [
                ("access-control-allow-methods", "GET, POST, OPTIONS"),
                ("access-control-allow-headers", "authorization, content-type, last-event-id, x-api-key, x-client-id"),
                ("access-control-max-age", "600"),
            ]
        return Response(204, b"", headers)

    # -- identity --------------------------------------------------------------------------------------------

    def _caller(self, req: Request, body_source: str | None = None) -> Identity:
        return self.auth.caller(req, body_source)

    def _early_caller(self, req: Request) -> Identity | None:
        """The caller, before the body is read, under ``auth = jwt`` or an auth hook: a request without a valid
        credential is refused (401) before its body is decoded. With ``auth = none`` the envelope's ``source`` may
        name the caller, so this is None and the body comes first."""
        if self.auth.mode != "none":
            return self._caller(req)
        return None

    def _stamp(self, envelope: Envelope, caller: Identity) -> Envelope:
        """Set what only the server may set: id (when absent), timestamp and source."""
        return msgspec.structs.replace(
            envelope,
            id=envelope.id or new_message_id(),
            timestamp=int(time.time() * 1000),
            source=caller.client_id,
        )

    # -- the stream ------------------------------------------------------------------------------------------

    async def stream(self, req: Request) -> StreamResponse:
        """``GET /sse``: authenticate, check topics and capacity, then open the stream."""
        ticket = req.query.get("ticket")
        if ticket:  # a one-time ticket (server/tickets.py) stands for the token it was exchanged for
            caller = req.caller = await self.tickets.stream_identity(ticket, req.query.get("clientId"))
        else:
            caller = self.auth.stream_caller(req)
        topics = self._topics(req.query.get("topics", ""), caller)
        cursor = cursor_of(req.headers.get("last-event-id"), req.query.get("lastEventId"))
        if not self.streams.accepting:
            raise HttpError(503, "shutting_down", "the server is shutting down", headers=[("retry-after", "5")])
        if not self.broker.ready():
            raise BrokerUnavailable()
        slot = self.streams.reserve()  # the last check: nothing may refuse the stream once it holds a slot
        if slot is None:
            raise HttpError(503, "server_full", "too many connections", headers=[("retry-after", "5")])

        async def open_stream(sink: Sink) -> int:
            grants = None if caller.admin else functools.partial(self.auth.can_subscribe, caller)
            opening = self.handshake.open(caller.client_id, topics, cursor, sink, grants=grants)
            # The slot passes to the connection: Handshake.open registers it before its first await.
            slot.release()
            conn_id = await opening
            if caller.expires is not None:
                self.streams.expire_at(conn_id, caller.expires)
            return conn_id

        return StreamResponse(list(SSE_HEADERS), open_stream, self._remove_stream, slot.release)

    def _topics(self, raw: str, caller: Identity) -> tuple[str, ...]:
        topics = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
        self._topics_bounded(topics)
        self._granted(topics, caller)
        return topics

    def _granted(self, topics: tuple[str, ...], caller: Identity) -> None:
        """Each pattern is valid (400 ``invalid_topic``) and the caller may subscribe to it (403)."""
        for topic in topics:
            try:
                validate_topic(topic, pattern=True)
            except TopicError as err:
                raise HttpError(400, "invalid_topic", str(err), {"topic": topic}) from None
            if not self.auth.can_subscribe(caller, topic):
                raise HttpError(403, "topic_not_granted", f"not allowed to subscribe to {topic}", {"topic": topic})

    def _topics_bounded(self, topics: tuple[str, ...]) -> None:
        """:meth:`Streams.bound_topics` (400), each refusal counted."""
        try:
            self.streams.bound_topics(topics)
        except HttpError as err:
            self.metrics.topics_refused += err.code in _TOPICS_REFUSED
            raise

    async def subscriptions(self, req: Request) -> Response:
        """``POST /api/subscriptions``: change the topic patterns of one live stream without reconnecting.

        The stream's owner or an admin may; to anyone else the stream does not exist (404 ``unknown_connection``,
        the same as for an id never issued). Each added pattern is checked as ``GET /sse?topics=`` checks it (400,
        403) against the caller's grants; the node that holds the stream then applies the change to the stream's
        own patterns (:meth:`Broker.change_stream_topics`), within the grants of the identity the stream was opened
        with (403 ``topic_not_granted``) and the stream's bounds (400). A change that changes something gets a
        ``system`` ``subscribed`` frame on the stream.
        """
        early = self._early_caller(req)
        body = decode(await req.json_body(self.settings.max_body), SubscriptionsRequest)
        caller = early or self._caller(req)
        add = tuple(dict.fromkeys(body.add))
        self._granted(add, caller)
        owner = await self.broker.stream_owner(body.connection_id)
        if owner is not None and self.auth.owns(caller, owner):
            try:
                topics = await self.broker.change_stream_topics(
                    body.connection_id, add=add, remove=frozenset(body.remove)
                )
            except HttpError as err:
                self.metrics.topics_refused += err.code in _TOPICS_REFUSED
                raise
            if topics is not None:
                return json_response(200, SubscriptionsAnswer(connection_id=body.connection_id, topics=list(topics)))
        raise HttpError(404, "unknown_connection", "no live stream with this connectionId is yours")

    # -- publishing ------------------------------------------------------------------------------------------

    async def _envelope(self, req: Request) -> Envelope:
        return decode_envelope(await req.json_body(self.settings.max_body))

    async def publish(self, req: Request) -> Response:
        """``POST /api/messages``."""
        early = self._early_caller(req)
        envelope = await self._envelope(req)
        if envelope.type == "ack":
            return await self._ack_envelope(req, envelope, early)
        if envelope.type == "command" and envelope.target is None:
            _no_topic(envelope)
        caller = early or self._caller(req, envelope.source)
        if envelope.type == "command" and envelope.target is None:
            return await self._submit(caller, envelope)
        return await self._publish(caller, envelope)

    async def _publish(self, caller: Identity, envelope: Envelope, *, exclude: str | None = None) -> Response:
        accepted = await self._accept(caller, envelope, exclude=exclude)
        if accepted.duplicate:
            return _duplicate(accepted)
        answer = PublishAnswer(message_id=accepted.message_id, delivered=accepted.delivered, queued=accepted.queued)
        if accepted.replicated is not None:
            answer.replicated = accepted.replicated
        return json_response(202, answer)

    async def accept(self, caller: Identity, envelope: Envelope, *, exclude: str | None = None) -> Accepted:
        """Publish a decoded ``envelope`` as ``caller``, the way the HTTP API does (permission, stamp, rate limit,
        broker): for programs that publish in-process (:class:`sse_fast.mount.SseFast`)."""
        return await self._accept(caller, envelope, exclude=exclude)

    async def _accept(self, caller: Identity, envelope: Envelope, *, exclude: str | None = None) -> Accepted:
        self.auth.check_publish(caller, target=envelope.target, topic=envelope.topic)
        stamped = self._stamp(envelope, caller)
        self.limits.charge(caller, stamped)
        # Only an id the client chose is deduped (_stamp fills in the others): the broker is told which it is.
        started = time.perf_counter()
        accepted = await self.broker.publish(stamped, exclude=exclude, chosen_id=bool(envelope.id))
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        return accepted

    async def _submit(self, caller: Identity, envelope: Envelope) -> Response:
        """A command to the scheduler, paid for like a publish: its task events go into the same log."""
        stamped = self._stamp(envelope, caller)
        self.limits.charge(caller, stamped)
        return await self.commands.submit(caller, stamped)

    async def direct(self, req: Request) -> Response:
        """``POST /api/direct/{clientId}``."""
        target = _client_id(req.path_params["clientId"])
        early = self._early_caller(req)
        envelope = decode_envelope(await req.json_body(self.settings.max_body), direct=True)
        if envelope.topic is not None:
            raise HttpError(422, "target_and_topic", "a direct message cannot also have a topic")
        caller = early or self._caller(req, envelope.source)
        return await self._publish(caller, msgspec.structs.replace(envelope, target=target))

    async def broadcast(self, req: Request) -> Response:
        """``POST /api/broadcast``."""
        early = self._early_caller(req)
        body = decode(await req.json_body(self.settings.max_body), BroadcastRequest)
        envelope = body.message
        if envelope.target is not None or envelope.topic is not None:
            raise HttpError(422, "not_a_broadcast", "a broadcast message has no target and no topic")
        if body.exclude_client_id is not None:
            _client_id(body.exclude_client_id, "excludeClientId")
        caller = early or self._caller(req, envelope.source)
        accepted = await self._accept(caller, envelope, exclude=body.exclude_client_id)
        if accepted.duplicate:
            return _duplicate(accepted)
        answer = BroadcastAnswer(sent_count=accepted.delivered, message_id=accepted.message_id)
        if accepted.replicated is not None:
            answer.replicated = accepted.replicated
        return json_response(202, answer)

    async def command(self, req: Request) -> Response:
        """``POST /api/commands``: to the scheduler, or relayed to ``target`` like a message."""
        early = self._early_caller(req)
        envelope = await self._envelope(req)
        if envelope.type != "command":
            raise HttpError(422, "not_a_command", "POST /api/commands takes an envelope of type command")
        _no_topic(envelope)
        caller = early or self._caller(req, envelope.source)
        if envelope.target is not None:
            return await self._publish(caller, envelope)
        return await self._submit(caller, envelope)

    # -- acks ------------------------------------------------------------------------------------------------

    async def ack(self, req: Request) -> Response:
        """``POST /api/ack``."""
        early = self._early_caller(req)
        body = decode(await req.json_body(self.settings.max_body), AckRequest)
        caller = early or self._caller(req)
        return await self._ack(caller, list(body.message_ids))

    async def _ack_envelope(self, req: Request, envelope: Envelope, early: Identity | None) -> Response:
        payload = envelope.payload if isinstance(envelope.payload, dict) else {}
        message_id = payload.get("messageId")
        if not isinstance(message_id, str):
            raise HttpError(422, "invalid_ack", "an ack envelope needs payload.messageId (a string)")
        caller = early or self._caller(req, envelope.source)
        return await self._ack(caller, [message_id])

    async def _ack(self, caller: Identity, message_ids: list[str]) -> Response:
        """Ack as the caller may (:meth:`Authenticator.acker`): an ack of a message it could never have received is
        not counted, and not refused either, so that the answer says nothing about messages it may not see."""
        acker = self.auth.acker(caller)
        acked = await self.broker.ack(acker.client_id, message_ids, admin=acker.admin, receives=acker.receives)
        return json_response(200, AckAnswer(acked=acked))

    async def message_status(self, req: Request) -> Response:
        """``GET /api/messages/{id}``: for the message's source or an admin; to anyone else it is unknown (the same
        404 as an id never used: no existence oracle)."""
        caller = self._caller(req)
        status = await self.broker.message_status(req.path_params["id"])
        if status is None or not self.auth.owns(caller, status[0]):
            raise HttpError(404, "unknown_message", "no requireAck message with this id is known")
        _, state, acked_by = status
        return json_response(200, MessageStatus(status=cast(DeliveryStatus, state), acked_by=acked_by))

    # -- introspection ---------------------------------------------------------------------------------------

    async def connections(self, req: Request) -> Response:
        """``GET /api/connections`` (admin)."""
        caller = self._caller(req)
        if not caller.admin:
            raise HttpError(403, "admin_required", "listing connections needs admin rights")
        return json_response(200, await self.broker.connections())

    async def presence(self, req: Request) -> Response:
        """``GET /api/presence?topic=...&scope=...&limit=...``: the clients whose streams receive ``topic`` now
        (:meth:`Broker.presence`), for an admin or a caller whose ``topics`` grants cover it (else 403
        ``topic_not_granted``, as the stream would refuse it). It tells more than subscribing would: the clientIds of
        every stream the topic reaches, admins' wildcard monitors included (docs/protocol.md section 11). Each
        client's requests are rate-limited (:class:`~sse_fast.server.limits.PresenceLimits`): each answer walks
        every row."""
        caller = self._caller(req)
        topic = _presence_topic(req.query.get("topic"))
        if not self.auth.can_subscribe(caller, topic):
            raise HttpError(403, "topic_not_granted", f"not allowed to subscribe to {topic}", {"topic": topic})
        scope, limit = _presence_scope(req.query.get("scope")), _presence_limit(req.query.get("limit"))
        self.presence_limits.charge(caller)  # each answer walks every row: see server/limits.py
        return json_response(200, await self.broker.presence(topic, scope=scope, limit=limit))

    async def healthz(self, req: Request) -> Response:
        """``GET /healthz``: the worker is alive."""
        return json_response(200, HealthAnswer())

    async def readyz(self, req: Request) -> Response:
        """``GET /readyz``: 200 when the broker is reachable and streams are accepted, else 503."""
        ready = self.broker.ready() and self.streams.accepting
        answer = ReadyAnswer(status="ready" if ready else "unavailable", broker=type(self.broker).__name__)
        return json_response(200 if ready else 503, answer, headers=[] if ready else [("retry-after", "5")])

    async def metrics_text(self, req: Request) -> Response:
        """``GET /metrics``."""
        body, content_type = self.metrics.render()
        return Response(200, body, [("content-type", content_type)])

    def openapi_document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of :attr:`routes` (``GET /openapi.json``)."""
        table = [
            Operation(r.method, r.path, r.request, r.responses, r.summary, r.query, r.headers, r.security,
                      getattr(r.handler, "__name__", ""))
            for r in self.routes
        ]  # fmt: skip
        return openapi_schema(
            table,
            title="sse-fast",
            version=__version__,
            description=_OPENAPI_DESCRIPTION,
            security_schemes=_SECURITY_SCHEMES,
            security=_API_SECURITY,
        )

    async def openapi(self, req: Request) -> Response:
        """``GET /openapi.json``: OpenAPI 3.1, generated from the msgspec types."""
        if self._openapi is None:
            self._openapi = msgspec.json.encode(self.openapi_document())
        return Response(200, self._openapi, [("content-type", "application/json")])
