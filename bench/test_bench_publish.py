"""The Python hot path of a publish: envelope validation, and a whole ``POST /api/messages`` through ``Api.handle``.

Each group pits sse-fast's code against the obvious Python alternative (``json`` plus hand-written checks), and
each contender's output is checked before its time counts. Run with ``make bench``.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import msgspec
import pytest

from sse_fast.app import App
from sse_fast.models import Envelope, ValidationFailure, decode_envelope
from sse_fast.server.http import Request, Response
from sse_fast.settings import Settings

Bench = Any  # pytest-benchmark's fixture

PAYLOAD = {"orderId": "A-1042", "status": "shipped", "items": [3, 7, 11], "eta": 1732540000000, "note": "x" * 24}
BODY = json.dumps(
    {"type": "json", "priority": 2, "topic": "orders.eu.shipped", "payload": PAYLOAD, "correlationId": "req-77"}
).encode()
BAD_BODY = BODY[:-1] + b', "prioirty": 1}'  # a typo'd key must be refused (422), not ignored


# -- the obvious alternative: json plus hand-written checks ----------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,128}")
_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_TOPIC = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
_CLIENT = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_KEYS = {
    "id", "type", "priority", "timestamp", "source", "target", "topic", "payload", "metadata",
    "requireAck", "correlationId", "ephemeral",
}  # fmt: skip


class Invalid(ValueError):
    """422, as the server would answer."""


def _check(value: Any, pattern: re.Pattern[str], key: str) -> None:
    if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
        raise Invalid(f"bad {key}")


def validate_by_hand(body: bytes) -> dict[str, Any]:
    """What a careful developer writes without a schema library: the same rules as ``Envelope``."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise Invalid("not an object")
    if unknown := data.keys() - _KEYS:
        raise Invalid(f"unknown keys {sorted(unknown)}")
    if "type" not in data or "payload" not in data:
        raise Invalid("type and payload are required")
    _check(data["type"], _TYPE, "type")
    for key, pattern in (("id", _ID), ("correlationId", _ID), ("topic", _TOPIC), ("target", _CLIENT)):
        _check(data.get(key), pattern, key)
    priority = data.get("priority", 1)
    if type(priority) is not int or not 0 <= priority <= 3:
        raise Invalid("priority must be 0..3")
    for key in ("requireAck", "ephemeral"):
        if type(data.get(key, False)) is not bool:
            raise Invalid(f"{key} must be a boolean")
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        raise Invalid("metadata must be an object")
    if data.get("source") is not None and (not isinstance(data["source"], str) or len(data["source"]) > 128):
        raise Invalid("bad source")
    if data.get("timestamp") is not None and type(data["timestamp"]) is not int:
        raise Invalid("bad timestamp")
    if data.get("target") is not None and data.get("topic") is not None:
        raise Invalid("target and topic")
    return data


def test_validate_msgspec(benchmark: Bench) -> None:
    benchmark.group = "validate: one envelope"
    envelope = benchmark(decode_envelope, BODY)
    assert envelope.topic == "orders.eu.shipped"
    assert envelope.priority == 2
    assert envelope.payload == PAYLOAD


def test_validate_by_hand(benchmark: Bench) -> None:
    benchmark.group = "validate: one envelope"
    data = benchmark(validate_by_hand, BODY)
    assert data["topic"] == "orders.eu.shipped"
    assert data["priority"] == 2
    assert data["payload"] == PAYLOAD


def _refused(validate: Callable[[bytes], Any], errors: tuple[type[Exception], ...]) -> Callable[[], bool]:
    def run() -> bool:
        try:
            validate(BAD_BODY)
        except errors:
            return True
        return False

    return run


def test_reject_msgspec(benchmark: Bench) -> None:
    benchmark.group = "validate: refuse an unknown key"
    assert benchmark(_refused(decode_envelope, (ValidationFailure,)))


def test_reject_by_hand(benchmark: Bench) -> None:
    benchmark.group = "validate: refuse an unknown key"
    assert benchmark(_refused(validate_by_hand, (Invalid,)))


# -- a whole publish request -----------------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never really suspends (nothing here waits on I/O) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the handler suspended: it is not a pure CPU path any more")


def _request(body: bytes) -> Request:
    async def chunks() -> AsyncIterator[bytes]:
        yield body

    # A back end's publish: with an API key, which the per-client publish limits leave alone (the benchmark sends
    # far faster than any one client may).
    headers = {"content-type": "application/json", "content-length": str(len(body)), "x-api-key": API_KEY}
    return Request("POST", "/api/messages", {}, headers, "127.0.0.1:50000", chunks)


API_KEY = "bench-publisher-key-0123456789"


@pytest.fixture(scope="module")
def app() -> App:
    return App(Settings.from_env({}, api_keys=(API_KEY,)))


def test_publish_request_sse_fast(benchmark: Bench, app: App) -> None:
    benchmark.group = "publish request: POST /api/messages (route, body, validate, stamp, log, encode, answer)"
    head = app.broker.log.head
    answer = benchmark(lambda: _run(app.api.handle(_request(BODY))))
    assert isinstance(answer, Response)
    assert answer.status == 202, answer.body
    result = msgspec.json.decode(answer.body)
    assert result["success"] is True
    assert result["delivered"] == 0
    assert result["messageId"]
    assert app.broker.log.head > head  # every round went into the replay log


class ObviousPublisher:
    """The same request handled the obvious way: dict routing, ``json``, hand checks, a deque as the log."""

    def __init__(self) -> None:
        self.log: deque[bytes] = deque(maxlen=10_000)
        self.ids = itertools.count(1)
        self.routes = {("POST", "/api/messages"): self.publish}

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        handler = self.routes.get((method, path))
        if handler is None:
            return 404, b'{"error":"not found","code":"not_found"}'
        if headers.get("content-type", "").split(";")[0] != "application/json":
            return 415, b'{"error":"json only","code":"unsupported_media_type"}'
        try:
            return handler(headers, body)
        except (Invalid, json.JSONDecodeError) as err:
            return 422, json.dumps({"error": str(err), "code": "invalid_message"}).encode()

    def publish(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        envelope = validate_by_hand(body)
        seq = next(self.ids)
        envelope["id"] = envelope.get("id") or f"m-{seq}"
        envelope["timestamp"] = int(time.time() * 1000)
        envelope["source"] = headers.get("x-client-id", "anonymous")
        data = json.dumps(envelope, separators=(",", ":"))
        self.log.append(f"id: {seq}\nevent: {envelope['type']}\ndata: {data}\n\n".encode())
        answer = {"success": True, "messageId": envelope["id"], "delivered": 0, "queued": False}
        return 202, json.dumps(answer).encode()


def test_publish_request_obvious(benchmark: Bench) -> None:
    benchmark.group = "publish request: POST /api/messages (route, body, validate, stamp, log, encode, answer)"
    server = ObviousPublisher()
    headers = {"content-type": "application/json", "content-length": str(len(BODY)), "x-client-id": "publisher-1"}
    status, body = benchmark(server.handle, "POST", "/api/messages", headers, BODY)
    assert status == 202
    result = json.loads(body)
    assert result["success"] is True
    assert result["delivered"] == 0
    assert json.loads(server.log[-1].split(b"data: ", 1)[1])["payload"] == PAYLOAD


def test_envelope_roundtrip_is_the_same(app: App) -> None:
    """Both validators accept and refuse the same bodies (a guard on the comparison itself)."""
    assert msgspec.to_builtins(decode_envelope(BODY)) == {**validate_by_hand(BODY), "priority": 2}
    with pytest.raises(ValidationFailure):
        decode_envelope(BAD_BODY)
    with pytest.raises(Invalid):
        validate_by_hand(BAD_BODY)
    assert isinstance(decode_envelope(BODY), Envelope)
