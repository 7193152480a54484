"""The message model: a msgspec Struct for every wire type of PROTOCOL.md, camelCase on the wire.

One definition gives validation, JSON and the JSON Schema behind ``/openapi.json``: every pattern and bound is a
``msgspec.Meta`` constraint on the field. Python attributes are snake_case (``envelope.require_ack``), the JSON keys
camelCase (``requireAck``).

Request bodies go through :func:`decode_envelope` / :func:`decode`, which turn msgspec's errors into a
:class:`ValidationFailure` carrying the HTTP status and error code of PROTOCOL.md section 7::

    400 malformed_json     not JSON at all, or an empty body
    400 invalid_client_id  a clientId (``target``, ``excludeClientId``) that breaks its pattern
    422 invalid_message    valid JSON that breaks the schema (non-object, unknown key, bad value)
    422 target_and_topic   ``target`` and ``topic`` both set
    422 target_not_allowed a ``target`` in the body of ``POST /api/direct/{clientId}``

Encode answers with the shared :data:`encoder`.
"""

from __future__ import annotations

import http
import inspect
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from sse_fast.errors import ErrorBody, ValidationFailure

__all__ = [
    "BUILTIN_TYPES",
    "CLIENT_ID_PATTERN",
    "CLIENT_ID_RULE",
    "ID_PATTERN",
    "MAX_ACK_IDS",
    "TOPIC_PATTERN",
    "TYPE_PATTERN",
    "AckAnswer",
    "AckRequest",
    "BroadcastAnswer",
    "BroadcastRequest",
    "ClientId",
    "CommandAnswer",
    "CommandPayload",
    "ConnectDetail",
    "ConnectionInfo",
    "DeliveryStatus",
    "DuplicateAnswer",
    "Envelope",
    "ErrorBody",
    "GapReason",
    "HealthAnswer",
    "HeartbeatPayload",
    "MessageId",
    "MessageStatus",
    "PresenceAnswer",
    "PresenceClient",
    "PresenceScope",
    "Priority",
    "ProgressPayload",
    "PublishAnswer",
    "ReadyAnswer",
    "RecentAnswer",
    "RecentMessage",
    "Route",
    "SubscribedDetail",
    "SubscriptionsAnswer",
    "SubscriptionsRequest",
    "SystemPayload",
    "TaskRecord",
    "TasksAnswer",
    "Topic",
    "ValidationFailure",
    "convert",
    "decode",
    "decode_envelope",
    "encode_delivered",
    "encoder",
    "new_message_id",
    "openapi_schema",
]

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------------------------

ID_PATTERN: Final = r"^[A-Za-z0-9_.:@/+=-]{1,128}$"
"""A message id (also task, command and correlation ids)."""
CLIENT_ID_PATTERN: Final = r"^[A-Za-z0-9_.:@-]{1,128}$"
"""A clientId: in ``target``, ``excludeClientId``, paths and queries."""
TYPE_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
"""A message type: a built-in one or a custom one."""
TOPIC_PATTERN: Final = r"^[A-Za-z0-9_:/-]+(?:\.[A-Za-z0-9_:/-]+)*$"
"""A concrete topic: ``.``-separated non-empty segments, 128 characters at most (no wildcards)."""
CLIENT_ID_RULE: Final = "1 to 128 letters, digits or any of _ . : @ -"
""":data:`CLIENT_ID_PATTERN` in words, for error messages (people read them, not regexes)."""
_PATTERN_WORDS: Final = {
    ID_PATTERN: "an id (1 to 128 letters, digits or any of _ . : @ / + = -)",
    CLIENT_ID_PATTERN: f"a clientId ({CLIENT_ID_RULE})",
    TYPE_PATTERN: "a type (1 to 64 letters, digits or any of _ . : -)",
    TOPIC_PATTERN: "a topic (segments of letters, digits or any of _ : / -, separated by single dots)",
}
BUILTIN_TYPES: Final = ("text", "json", "system", "command", "heartbeat", "ack", "error", "progress")
"""The message types the protocol defines; any other type must match :data:`TYPE_PATTERN`."""
MAX_ACK_IDS: Final = 1000
"""Message ids one ``POST /api/ack`` may carry."""


def _exact(pattern: str) -> str:
    # msgspec matches with re.search, where `$` also matches before a final "\n": "bob\n" would pass `^bob$`.
    # `(?!\n)` closes that gap and means nothing to an ECMA-262 (JSON Schema) engine, whose `$` is the end.
    return pattern + r"(?!\n)"


MessageId = Annotated[str, Meta(pattern=_exact(ID_PATTERN), description="A message id.", examples=["01J0ABCXYZ"])]
ClientId = Annotated[str, Meta(pattern=_exact(CLIENT_ID_PATTERN), description="A clientId.", examples=["alice"])]
Topic = Annotated[
    str,
    Meta(pattern=_exact(TOPIC_PATTERN), max_length=128, description="A topic.", examples=["orders.eu.created"]),
]
MessageType = Annotated[
    str,
    Meta(
        pattern=_exact(TYPE_PATTERN),
        description="One of " + ", ".join(BUILTIN_TYPES) + ", or a custom type.",
        examples=list(BUILTIN_TYPES),
    ),
]
Priority = Annotated[int, Meta(ge=0, le=3, description="LOW 0, NORMAL 1, HIGH 2, CRITICAL 3.")]
Millis = Annotated[int, Meta(ge=0, description="Milliseconds since the epoch.")]
Count = Annotated[int, Meta(ge=0)]
Percent = Annotated[float, Meta(ge=0, le=100)]
GapReason = Literal["unknown_cursor", "expired", "failover"]
"""Why a resume could not replay everything after the client's cursor (PROTOCOL.md section 2; ``failover``: Redis
Sentinel promoted a replica since the cursor was issued, docs/protocol.md)."""
DeliveryStatus = Literal["pending", "delivered", "acked", "expired"]
"""Where a ``requireAck`` message stands (PROTOCOL.md section 5)."""

_TARGET_AND_TOPIC = "`target` and `topic` are exclusive"


# ---------------------------------------------------------------------------------------------------------------
# The envelope and the request bodies
# ---------------------------------------------------------------------------------------------------------------


class Envelope(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    """One message, in either direction (PROTOCOL.md section 1).

    On the wire, fields at their default are left out: no ``priority`` means 1 (NORMAL), no ``requireAck`` or
    ``ephemeral`` means false, and a missing optional field means null; but a delivered envelope always carries
    ``priority`` (:func:`encode_delivered`). ``id``, ``timestamp`` and ``source`` are
    set by the server on accept. No ``target`` and no ``topic`` is a broadcast; both is an error, and so is
    ``requireAck`` on an ``ephemeral`` message (422 ``invalid_message``).
    """

    id: MessageId | None = None
    type: MessageType
    priority: Priority = 1
    timestamp: Annotated[int, Meta(description="Set by the server on accept (ms since the epoch).")] | None = None
    source: Annotated[str, Meta(max_length=128, description="Set by the server from the caller.")] | None = None
    target: ClientId | None = None
    topic: Topic | None = None
    payload: Any
    metadata: dict[str, Any] | None = None
    require_ack: bool = False
    correlation_id: MessageId | None = None
    ephemeral: bool = False

    def __post_init__(self) -> None:
        if self.target is not None and self.topic is not None:
            raise ValueError(f"{_TARGET_AND_TOPIC}: send to a client or to a topic, not both")
        if self.require_ack and self.ephemeral:
            raise ValueError("`requireAck` and `ephemeral` are exclusive: an ephemeral message is not kept")


class BroadcastRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The body of ``POST /api/broadcast``: a message for every connection but ``excludeClientId``'s."""

    message: Envelope
    exclude_client_id: ClientId | None = None


class AckRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """The body of ``POST /api/ack``."""

    message_ids: Annotated[list[MessageId], Meta(min_length=1, max_length=MAX_ACK_IDS)]


class CommandPayload(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True, omit_defaults=True):
    """The payload of a ``command`` envelope (PROTOCOL.md section 4).

    ``execute`` needs ``task``; ``cancel``, ``pause``, ``resume`` and ``query`` need ``taskId``; ``sync`` needs
    neither (it answers the caller's tasks).
    """

    command_id: MessageId
    action: Literal["execute", "cancel", "pause", "resume", "query", "sync"]
    task: Annotated[str, Meta(pattern=_exact(TYPE_PATTERN), description="A task handler's name.")] | None = None
    task_id: MessageId | None = None
    params: dict[str, Any] | None = None
    timeout: Annotated[int, Meta(gt=0, description="Milliseconds.")] | None = None
    require_ack: bool = False

    def __post_init__(self) -> None:
        if self.action == "execute" and self.task is None:
            raise ValueError("action `execute` needs `task`")
        if self.action in ("cancel", "pause", "resume", "query") and self.task_id is None:
            raise ValueError(f"action `{self.action}` needs `taskId`")


# ---------------------------------------------------------------------------------------------------------------
# Payloads the server sends
# ---------------------------------------------------------------------------------------------------------------


class SystemPayload(msgspec.Struct, kw_only=True, rename="camel"):
    """The payload of a ``system`` frame: ``connect``, ``disconnect``, ``maintenance``..."""

    event: str
    detail: Any = None


class ConnectDetail(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """``detail`` of the ``connect`` system event; ``reason`` says why a resume failed."""

    client_id: ClientId
    connection_id: str
    resumed: bool
    missed: Count
    server_time: Millis
    reason: GapReason | None = None


_Pattern = Annotated[
    str, Meta(min_length=1, max_length=128, description="A topic pattern (`*` one segment, a final `>` one or more).")
]
"""A topic pattern as a request names it (the core validates its segments)."""


class SubscriptionsRequest(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """``POST /api/subscriptions``: change the topic patterns of one live stream, without reconnecting.

    ``remove`` is applied first, then ``add`` (a pattern in both ends up subscribed); removing a pattern the stream
    does not have is not an error.
    """

    connection_id: Annotated[str, Meta(min_length=1, max_length=160, description="`connect.detail.connectionId`.")]
    add: Annotated[list[_Pattern], Meta(max_length=64)] = []
    remove: Annotated[list[_Pattern], Meta(max_length=64)] = []


class SubscriptionsAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    """The answer of ``POST /api/subscriptions``: the stream's patterns from now on."""

    connection_id: str
    topics: list[str]


class SubscribedDetail(msgspec.Struct, kw_only=True, rename="camel"):
    """``detail`` of the ``subscribed`` system event: a live change of the stream's topic patterns."""

    topics: list[str]
    added: list[str]
    removed: list[str]


class HeartbeatPayload(msgspec.Struct, kw_only=True, rename="camel"):
    """The payload of a ``heartbeat`` frame."""

    server_time: Millis


class ProgressPayload(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """The payload of a ``progress`` event of a task."""

    task_id: MessageId
    progress: Percent
    description: str | None = None
    estimated_time_remaining: Annotated[int, Meta(ge=0, description="Milliseconds.")] | None = None


class TaskRecord(msgspec.Struct, kw_only=True, rename="camel"):
    """A task of the scheduler (PROTOCOL.md section 4); times are ms since the epoch."""

    task_id: MessageId
    command_id: MessageId
    client_id: ClientId
    task: str
    params: dict[str, Any]
    priority: Priority
    status: Literal["pending", "running", "paused", "completed", "failed", "cancelled", "timed_out"]
    progress: Percent
    attempts: Count
    created_at: Millis
    started_at: Millis | None = None
    completed_at: Millis | None = None
    result: Any = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------------------------


class PublishAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    """``202`` of ``POST /api/messages`` and ``/api/direct/{clientId}``.

    The server answers a repeat with a :class:`DuplicateAnswer`; the client reads that as this type too (``duplicate``
    true, ``queued`` false).
    """

    success: bool = True
    message_id: MessageId
    delivered: Annotated[int, Meta(ge=0, description="Connections written to (on this node).")]
    queued: bool = False
    duplicate: bool | UnsetType = UNSET
    replicated: Annotated[
        bool | UnsetType,
        Meta(
            description="Only with SSE_FAST_REDIS_WAIT_REPLICAS: whether that many replicas confirmed the write within "
            "SSE_FAST_REDIS_WAIT_TIMEOUT (false: accepted, but a failover before they catch up may lose it; a retry "
            "with the same id is deduplicated)."
        ),
    ] = UNSET


class DuplicateAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    """``200`` of a publish (message, direct, broadcast) whose id this source already used within the dedupe window:
    it was accepted once, and nothing is sent again."""

    success: bool = True
    message_id: MessageId
    duplicate: Literal[True] = True
    delivered: Annotated[int, Meta(ge=0, le=0, description="Always 0: nothing was sent again.")] = 0


class BroadcastAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    """``202`` of ``POST /api/broadcast``."""

    success: bool = True
    sent_count: Annotated[int, Meta(ge=0, description="Connections written to (on this node).")]
    message_id: MessageId
    replicated: Annotated[
        bool | UnsetType,
        Meta(
            description="Only with SSE_FAST_REDIS_WAIT_REPLICAS: whether that many replicas confirmed the write within "
            "SSE_FAST_REDIS_WAIT_TIMEOUT (false: accepted, but a failover before they catch up may lose it; a retry "
            "with the same id is deduplicated)."
        ),
    ] = UNSET


class AckAnswer(msgspec.Struct, kw_only=True):
    """``200`` of ``POST /api/ack`` (and of an ``ack`` envelope sent to ``/api/messages``)."""

    acked: Count


class CommandAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    """``202`` of ``POST /api/commands`` handled by the scheduler, and of the task controls (``cancel``, ``pause``,
    ``resume``); ``200`` with ``duplicate`` for an ``execute`` whose ``commandId`` this client already sent."""

    success: bool = True
    task_id: MessageId
    status: str
    duplicate: bool | UnsetType = UNSET


class MessageStatus(msgspec.Struct, kw_only=True, rename="camel"):
    """``GET /api/messages/{id}`` for a ``requireAck`` message."""

    status: DeliveryStatus
    acked_by: list[ClientId]


class ConnectionInfo(msgspec.Struct, kw_only=True, rename="camel"):
    """One live stream in ``GET /api/connections``; times are ms since the epoch."""

    client_id: ClientId
    connection_id: str
    topics: list[str]
    connected_at: Millis
    last_active_at: Millis
    queued_frames: Count
    dropped_frames: Count
    queued_bytes: Count = 0
    node: str = ""
    """The node (worker) that holds the stream: the part of ``connectionId`` before its last ``.``."""


PresenceScope = Literal["node", "cluster"]
"""Whose connections ``GET /api/presence`` counts: this node's (worker's), or every live node's (with Redis)."""


class PresenceClient(msgspec.Struct, kw_only=True, rename="camel"):
    """One client present on a topic, in ``GET /api/presence``: its live connections that receive the topic."""

    client_id: ClientId
    connections: Annotated[int, Meta(ge=1)]


class PresenceAnswer(msgspec.Struct, kw_only=True):
    """``GET /api/presence?topic=...``: who receives ``topic`` now, on this node or the whole cluster.

    ``count`` is the exact number of distinct clients, ``connections`` of their streams; ``clients`` lists at most
    ``limit`` of them (by clientId), and ``truncated`` says that some were left out.
    """

    topic: Topic
    scope: PresenceScope
    count: Count
    connections: Count
    clients: list[PresenceClient]
    truncated: bool
    limit: Count


class RecentMessage(msgspec.Struct, kw_only=True):
    """One entry of ``GET /api/admin/recent``: a message of the replay log, whatever its route, and its cursor."""

    cursor: str
    message: Envelope


class RecentAnswer(msgspec.Struct, kw_only=True):
    """``GET /api/admin/recent``: the newest messages of the replay log, newest first (admin)."""

    messages: list[RecentMessage]
    limit: Count
    """The limit applied: the one asked for, capped at ``SSE_FAST_ADMIN_RECENT_MAX``."""


class TasksAnswer(msgspec.Struct, kw_only=True):
    """``GET /api/tasks`` and the answer to a ``sync`` command."""

    tasks: list[TaskRecord]


class HealthAnswer(msgspec.Struct, kw_only=True):
    """``200`` of ``GET /healthz``: the worker is alive."""

    status: Literal["ok"] = "ok"


class ReadyAnswer(msgspec.Struct, kw_only=True):
    """``GET /readyz``: ``200`` with ``ready`` when the broker is reachable and streams are accepted, else ``503``
    (with ``Retry-After``) and ``unavailable``."""

    status: Literal["ready", "unavailable"]
    broker: Annotated[str, Meta(description="The broker's kind.", examples=["MemoryBroker", "RedisBroker"])]


encoder: Final = msgspec.json.Encoder()
"""The shared JSON encoder: ``encoder.encode(answer)``."""

_TYPE_KEY = b'"type":"'


def encode_delivered(envelope: Envelope) -> bytes:
    """``envelope`` as delivered on a stream: one line of JSON with the defaults left out, except ``priority``,
    which is always there (a browser reading ``msg.priority`` never sees undefined)."""
    data = encoder.encode(envelope)
    if envelope.priority != 1:
        return data
    # `priority` goes right after `type`, where the field order puts it. Neither `id` nor `type` can hold a `"`,
    # so the first `"type":"` is the key, and the next `"` ends its value.
    start = data.index(_TYPE_KEY) + len(_TYPE_KEY)
    end = data.index(b'"', start) + 1
    return data[:end] + b',"priority":1' + data[end:]


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_CLIENT_ID_KEYS = ("target", "excludeClientId")


def decode(body: bytes, type: type[T]) -> T:
    """``body`` as ``type``, or :class:`ValidationFailure` (400 ``malformed_json``, 422 ``invalid_message``...)."""
    decoder = _decoders.get(type)
    if decoder is None:
        decoder = _decoders[type] = msgspec.json.Decoder(type)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        _raise_if_malformed(body)  # msgspec validates the object before it sees trailing garbage (`{}x`)
        raise _failure(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _malformed(body, exc) from None
    except RecursionError:  # nested deeper than msgspec's limit: hostile, never a 500
        raise _too_deep() from None


def _too_deep() -> ValidationFailure:
    return ValidationFailure(400, "malformed_json", "malformed JSON: nested too deeply")


def _raise_if_malformed(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _malformed(body, exc) from None
    except RecursionError:
        raise _too_deep() from None


def _malformed(body: bytes, exc: msgspec.DecodeError) -> ValidationFailure:
    reason = "empty body" if not body.strip() else str(exc)
    return ValidationFailure(400, "malformed_json", f"malformed JSON: {reason}")


def convert(value: Any, type: type[T], *, path: str = "$.payload") -> T:
    """An already decoded ``value`` (e.g. ``envelope.payload``) as ``type``; errors are located under ``path``."""
    try:
        return msgspec.convert(value, type)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        inner = match.group(1)[1:] if match else ""
        reason = message[: match.start()] if match else message
        raise _failure(f"{reason} - at `{path}{inner}`") from None


def decode_envelope(body: bytes, *, model: type[Envelope] = Envelope, direct: bool = False) -> Envelope:
    """The envelope in a request body; with ``direct`` (``POST /api/direct/{clientId}``) a ``target`` is 422."""
    envelope = decode(body, model)
    if direct and envelope.target is not None:
        raise ValidationFailure(
            422,
            "target_not_allowed",
            "the target comes from the path: leave `target` out of the body",
            {"path": "$.target"},
        )
    return envelope


def _in_words(reason: str) -> str:
    """msgspec's ``Expected `str` matching regex '<pattern>'``, said in words when the pattern is one of ours."""
    for pattern, words in _PATTERN_WORDS.items():
        reason = reason.replace(f"Expected `str` matching regex {_exact(pattern)!r}", f"Expected {words}")
    return reason


def _failure(message: str) -> ValidationFailure:
    message = _in_words(message)
    match = _PATH.search(message)
    path = match.group(1) if match else "$"
    reason = message[: match.start()] if match else message
    detail = {"path": path, "reason": reason}
    if reason.startswith(_TARGET_AND_TOPIC):
        return ValidationFailure(422, "target_and_topic", f"invalid message: {reason}", detail)
    bad_value = _PATTERN_WORDS[CLIENT_ID_PATTERN] in reason or "of length" in reason
    if bad_value and path.rsplit(".", 1)[-1] in _CLIENT_ID_KEYS:
        message = f"invalid clientId at {path}: expected {CLIENT_ID_RULE}"
        return ValidationFailure(400, "invalid_client_id", message, detail)
    return ValidationFailure(422, "invalid_message", f"invalid message: {message}", detail)


# ---------------------------------------------------------------------------------------------------------------
# Message ids
# ---------------------------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # ascending in ASCII, so ids sort as text in time order
_RANDOM_BITS = 80
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # every 10-bit value as two digits


class _IdState:
    """The sequence of ids: an instance with slots, since assigning class attributes on every id would invalidate
    the interpreter's attribute cache of the class each time."""

    __slots__ = ("counter", "head", "high", "last_ms", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = 0
        self.counter = 0
        # The first 24 characters of the last id and the value they spell (the id's value >> 10): they change only
        # when the millisecond does or the counter crosses a multiple of 1,024, so most ids spell only their last two.
        self.high = -1
        self.head = ""


_ids = _IdState()


def _reseed() -> None:
    _ids.last_ms = 0  # a forked child must not continue its parent's sequence


os.register_at_fork(after_in_child=_reseed)


def new_message_id() -> str:
    """A unique id that sorts (as text) in creation order: 26 characters, a ULID.

    48 bits of milliseconds then 80 random bits, Crockford base32; within one millisecond (or if the clock steps
    back) the previous id plus one, so that ids from this process are strictly increasing.
    """
    now = time.time_ns() // 1_000_000
    state = _ids
    with state.lock:
        if now > state.last_ms:
            state.last_ms, state.counter = now, secrets.randbits(_RANDOM_BITS - 1)
        else:
            state.counter += 1
            if state.counter >> _RANDOM_BITS:
                state.last_ms, state.counter = state.last_ms + 1, 0
        value = (state.last_ms << _RANDOM_BITS) | state.counter
        high = value >> 10
        if high != state.high:
            # Two base32 digits (10 bits) per step: 12 look-ups instead of 24.
            state.high, state.head = high, "".join([_PAIRS[(high >> s) & 1023] for s in range(110, -1, -10)])
        return state.head + _PAIRS[value & 1023]


# ---------------------------------------------------------------------------------------------------------------
# OpenAPI
# ---------------------------------------------------------------------------------------------------------------


class Route(NamedTuple):
    """One operation for :func:`openapi_schema`.

    ``request`` is the body's type (or None). ``responses`` maps a status to what its body is: a type; a tuple of
    types (any of them); a mapping (a JSON Schema, as is); a media type string for a non-JSON body
    (``"text/event-stream"``, ``"text/plain"``); or None (no body). Every operation also gets a ``default`` response
    with :class:`ErrorBody`: any error may be answered (``500 internal_error``, ``405`` with ``Allow``...).
    ``query`` and ``headers`` list parameters as (name, description). ``security`` lists the security requirements
    that admit a caller (``[{"bearerAuth": []}, {}]``; ``{}`` is anonymous), or None for the document's.
    """

    method: str
    path: str
    request: Any
    responses: Mapping[int, Any]
    summary: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    security: Sequence[Mapping[str, Sequence[str]]] | None = None
    operation_id: str = ""


_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARAM_SCHEMAS: Final = {
    "clientId": {"type": "string", "pattern": CLIENT_ID_PATTERN},
    "id": {"type": "string", "pattern": ID_PATTERN},
    "messageId": {"type": "string", "pattern": ID_PATTERN},
    "taskId": {"type": "string", "pattern": ID_PATTERN},
    "X-Client-Id": {"type": "string", "pattern": CLIENT_ID_PATTERN},
}
_RETRY_AFTER: Final = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 0}}
}
_ERROR_DESCRIPTION = "Any other error: `{error, code, detail}` (PROTOCOL.md section 7)."


def openapi_schema(
    routes: Iterable[Route | tuple[Any, ...]],
    *,
    title: str = "sse-fast",
    version: str = "0",
    description: str = "",
    security_schemes: Mapping[str, Any] | None = None,
    security: Sequence[Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``routes``, its schemas generated from the msgspec types they name.

    ``security_schemes`` go to ``components.securitySchemes``; ``security`` is what admits a caller to an operation
    whose route says nothing.
    """
    table = [r if isinstance(r, Route) else Route(*r) for r in routes]
    types: list[Any] = [ErrorBody]
    for route in table:
        for kind in (route.request, *route.responses.values()):
            types.extend(k for k in (kind if isinstance(kind, tuple) else (kind,)) if _is_type(k))
    refs, schemas = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schema_of = {id(t): s for t, s in zip(types, refs, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema_of)
    for component in schemas.values():
        if "description" in component:  # a class docstring, indented as in the source
            component["description"] = inspect.cleandoc(component["description"])
    info = {"title": title, "version": version} | ({"description": description} if description else {})
    components: dict[str, Any] = {"schemas": schemas}
    if security_schemes:
        components["securitySchemes"] = dict(security_schemes)
    doc: dict[str, Any] = {"openapi": "3.1.0", "info": info, "paths": paths, "components": components}
    if security is not None:
        doc["security"] = [dict(requirement) for requirement in security]
    return doc


def _param_schema(name: str) -> dict[str, Any]:
    return _PARAM_SCHEMAS.get(name, {"type": "string"})


def _is_type(kind: Any) -> bool:
    return kind is not None and not isinstance(kind, (str, Mapping))


def _operation(route: Route, schema_of: Mapping[int, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary} if route.summary else {}
    if route.operation_id:
        op["operationId"] = route.operation_id
    params = [
        {"name": n, "in": "path", "required": True, "schema": _param_schema(n)} for n in _PATH_PARAM.findall(route.path)
    ]
    for where, named in (("query", route.query), ("header", route.headers)):
        params += [{"name": n, "in": where, "required": False, "description": d, "schema": _param_schema(n)}
                   for n, d in named]  # fmt: skip
    if params:
        op["parameters"] = params
    if route.request is not None:
        content = {"application/json": {"schema": schema_of[id(route.request)]}}
        op["requestBody"] = {"required": True, "content": content}
    responses = {str(status): _response(status, kind, schema_of) for status, kind in sorted(route.responses.items())}
    error = {"application/json": {"schema": schema_of[id(ErrorBody)]}}
    op["responses"] = responses | {"default": {"description": _ERROR_DESCRIPTION, "content": error}}
    if route.security is not None:
        op["security"] = [dict(requirement) for requirement in route.security]
    return op


def _response(status: int, kind: Any, schema_of: Mapping[int, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": http.HTTPStatus(status).phrase}
    if status in (429, 503):
        answer["headers"] = _RETRY_AFTER
    if isinstance(kind, str):
        answer["content"] = {kind: {"schema": {"type": "string"}}}
    elif isinstance(kind, Mapping):
        answer["content"] = {"application/json": {"schema": dict(kind)}}
    elif isinstance(kind, tuple):
        answer["content"] = {"application/json": {"schema": {"anyOf": [schema_of[id(k)] for k in kind]}}}
    elif kind is not None:
        answer["content"] = {"application/json": {"schema": schema_of[id(kind)]}}
    return answer
