"""An in-process App on either broker, a sink that decodes what a stream receives, and quiescence helpers.

No server process and no socket to the client: streams are opened with ``app.handshake.open`` (what ``GET /sse`` does
once its headers are out) and publishes go to ``app.broker`` directly, as ``tests/test_broker.py`` does. With the
Redis broker the frames still travel through Redis (the node's reader loop routes the log), so a test waits for
:func:`settle` before it looks at what a stream received.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from sse_fast import Decoder, Event
from sse_fast._core import stream_id_seq
from sse_fast.broker.redis.keys import LOG
from sse_fast.models import Envelope, new_message_id
from sse_fast.server.app import App
from sse_fast.settings import Settings

__all__ = [
    "Received",
    "StreamSink",
    "cancel_pending",
    "close_app",
    "close_stream",
    "envelope",
    "head_seq",
    "make_app",
    "on_redis",
    "open_stream",
    "payloads",
    "running_app",
    "settle",
    "tick",
    "wait_until",
]

#: Seconds a condition may take before a test gives up on it (Redis on a loaded 2-core machine, never a sleep).
DEADLINE = 10.0


@dataclass(frozen=True)
class Received:
    """One frame a stream received, decoded: its event, its envelope and the cursor in effect after it."""

    event: str
    envelope: dict[str, Any]
    cursor: str  # the Last-Event-ID a client holds after this frame (SSE: the last ``id:`` seen so far)
    has_id: bool  # whether this frame carried its own ``id:`` line


@dataclass
class StreamSink:
    """A sink that takes every write (never backpressure) and decodes the stream as a browser would."""

    data: bytearray = field(default_factory=bytearray)
    frames: list[Received] = field(default_factory=list)
    closed: bool = False
    conn_id: int | None = None  # set by :func:`open_stream`
    _decoder: Decoder = field(default_factory=Decoder)

    direct = None  # written through write() only

    def wrote(self, size: int) -> None:
        raise AssertionError("only a direct sink is told what the hub wrote")

    def write(self, data: bytes) -> bool:
        self.data += data
        for event in self._decoder.feed(data):
            self._add(event)
        return True

    def close(self) -> None:
        self.closed = True

    def _add(self, event: Event) -> None:
        cursor = event.id or ""
        previous = self.frames[-1].cursor if self.frames else ""
        # Cursors only grow on a stream, so a frame carried an ``id:`` line exactly when the cursor changed.
        self.frames.append(Received(event.event, msgspec.json.decode(event.data), cursor, cursor != previous))

    @property
    def connect(self) -> dict[str, Any] | None:
        """The ``connect`` frame's detail, once written."""
        if not self.frames or self.frames[0].event != "system":
            return None
        payload = self.frames[0].envelope["payload"]
        return payload["detail"] if payload.get("event") == "connect" else None

    @property
    def cursor(self) -> str:
        """The Last-Event-ID this stream's client would reconnect with."""
        return self._decoder.last_event_id

    def messages(self) -> list[Received]:
        """Every frame after ``connect``, without heartbeats (keepalive comments never become events)."""
        return [f for f in self.frames[1:] if f.event != "heartbeat"]


async def wait_until(condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` once per loop turn (plus a yield) until it holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.001)  # ok-sleep: a condition poll (Redis replies arrive on the loop meanwhile)


async def make_app(redis_url: str | None = None, **settings: Any) -> App:
    """An App on the memory broker, or on the Redis broker at ``redis_url``, bound to the running loop.

    The ticker is not started (a test calls ``broker.tick(now)`` itself) and no signal is hooked. With Redis, the
    reader and the listener run, and the node's first heartbeat is in Redis before this returns: presence counts
    only the connections of a live node, so a targeted publish made before it would be queued for an online client.
    """
    if redis_url is not None:
        settings["broker"] = redis_url
    app = App(Settings(**settings))
    loop = asyncio.get_running_loop()
    app.streams._loop = loop  # what startup() does, without the ticker and the signal hooks
    broker: Any = app.broker
    if on_redis(app):
        broker.start(loop)
        await wait_until(lambda: broker.counters()["cluster_nodes"] >= 1, "the node's first heartbeat")
    return app


def on_redis(app: App) -> bool:
    """Whether ``app`` runs the Redis broker."""
    return app.settings.broker != "memory"


async def head_seq(app: App) -> int:
    """The seq of the newest entry of the broker's log (what a stream opened now starts from)."""
    broker: Any = app.broker
    if not on_redis(app):
        return int(broker.log.head)
    return int(broker._last_seq)  # after settle(): the reader routed the whole log


async def close_app(app: App) -> None:
    """Close the broker (Redis: its loops and connections)."""
    await app.broker.close()


async def cancel_pending() -> None:
    """Cancel and await every other task still on the loop (best-effort work a closed broker left behind), so that
    none outlives a loop the test closes."""
    current = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not current]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


async def _turns(app: App) -> None:
    """Let the writer flush what the hub queued (it runs once per loop turn)."""
    for _ in range(100):
        await asyncio.sleep(0)  # ok-sleep: one loop turn for the writer's call_soon
        if not app.streams._flush_pending and not app.streams._dirty:
            return
    raise AssertionError("the writer did not flush within 100 loop turns")


async def _redis_quiet(broker: Any) -> bool:
    """The reader routed the whole log, and nothing the broker started in the background is still running."""
    if broker._connects or broker._presence._gone or broker._marks:
        return False
    current = asyncio.current_task()
    if any(not t.done() for t in asyncio.all_tasks() if t is not current and t not in broker._tasks):
        return False
    try:
        info = await broker.redis.xinfo_stream(LOG)
    except ResponseError:  # no log yet: nothing to route
        return True
    routed, last = stream_id_seq(broker._last_id), stream_id_seq(info["last-generated-id"])
    return routed is not None and last is not None and routed >= last


async def settle(app: App) -> None:
    """Wait until everything a step caused has reached the streams: the Redis reader, background tasks, the writer."""
    if on_redis(app):
        broker = app.broker
        await wait_until(lambda: _redis_quiet(broker), "the Redis broker to route its log and finish its tasks")
    await _turns(app)


@contextlib.asynccontextmanager
async def running_app(redis_url: str | None, **settings: Any) -> AsyncIterator[App]:
    """An App on the memory broker (``None``) or on the Redis at ``redis_url``, closed on exit."""
    app = await make_app(redis_url, **settings)
    try:
        yield app
    finally:
        await close_app(app)
        await cancel_pending()


def envelope(payload: Any, **fields: Any) -> Envelope:
    """A ``json`` envelope as the server hands it to a broker: id, timestamp and source (``server``) set."""
    fields.setdefault("id", new_message_id())
    fields.setdefault("source", "server")
    return Envelope(type="json", payload=payload, timestamp=int(time.time() * 1000), **fields)


async def open_stream(app: App, client: str, cursor: str | None = None, topics: tuple[str, ...] = ()) -> StreamSink:
    """What ``GET /sse`` does once its headers are out; returns once everything it caused reached the sink."""
    sink = StreamSink()
    sink.conn_id = await app.handshake.open(client, topics, cursor, sink)
    await settle(app)
    return sink


async def close_stream(app: App, sink: StreamSink) -> None:
    """What the server does when a stream's socket closes (on the loop: Redis withdraws its presence from there)."""
    assert sink.conn_id is not None
    app.streams.remove(sink.conn_id)
    await settle(app)


async def tick(app: App, now: float) -> None:
    """``broker.tick(now)`` (the ticker's job) with the test's clock, then wait for it: Redis ticks on a task."""
    app.broker.tick(now)
    task = getattr(app.broker, "_tick_task", None)
    if task is not None:
        await task
    await settle(app)


def payloads(sink: StreamSink) -> list[Any]:
    """The payloads of every frame after ``connect``, in order (heartbeats left out)."""
    return [f.envelope["payload"] for f in sink.messages()]
