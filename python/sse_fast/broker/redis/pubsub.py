"""Pub/sub for the Redis broker: ephemeral messages and controls between nodes.

Ephemeral messages go over pub/sub (``sse:eph``): no log, no mailbox, no cursor. The publishing node routes its
own message to its streams at once; every other node routes it when its listener receives it. ``sse:control``
carries ``replaced`` closes to the node that holds the connection (sent by
:meth:`~sse_fast.broker.redis.presence.Presence.enforce_limit`), and task controls and their answers between nodes
(:mod:`sse_fast.scheduler.redis_registry`, the task registry this broker chooses), and live topic changes
(``POST /api/subscriptions``) to the node that holds the stream, answered over the same channel
(:meth:`PubSub.retopic`). Each node listens on both channels with one pub/sub connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sse_fast._core import Frame
from sse_fast.broker.redis import keys as keys
from sse_fast.broker.redis.host import Host
from sse_fast.broker.redis.host import text as _text
from sse_fast.errors import HttpError
from sse_fast.models import Envelope

__all__ = ["PubSub", "Route"]

log = logging.getLogger("sse_fast.redis")

_json = msgspec.json.Encoder()

#: An ephemeral message as it travels on ``sse:eph``: ``[node, data, event, priority, target, topic, exclude]``.
Route = list[Any]


class PubSub:
    """This node's side of ``sse:eph`` and ``sse:control``: the listener, ephemeral routing, control handlers."""

    def __init__(self, host: Host, client: aioredis.Redis, *, down: Callable[[BaseException], None]) -> None:
        """Listen with ``client`` (a connection without a read timeout); ``down(err)`` reports Redis unreachable."""
        self._host = host
        self._client = client
        self._down = down
        self._closing = False
        self._control_ops: dict[str, Callable[[dict[str, Any]], None]] = {
            "close": self._close_replaced,
            "topics": self._retopic_here,
            "topics_reply": self._retopic_answered,
        }
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._serving: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Let the listener end (the broker is closing; it cancels the listener's task as well)."""
        self._closing = True

    # -- the listener ------------------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Receive both channels until the broker closes, resubscribing (with backoff) when Redis goes away."""
        backoff = 0.05
        while not self._closing:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.EPHEMERAL, keys.CONTROL)
                backoff = 0.05
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                self._down(err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.25)  # as the reader: find a promoted primary quickly
            except Exception:
                log.exception("the Redis listener failed; continuing")
            finally:
                with contextlib.suppress(BaseException):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = _text(message["channel"])
        body = msgspec.json.decode(message["data"])
        if channel == keys.EPHEMERAL:
            if body[0] != self._host.node_id:
                self.route_ephemeral(body)
        elif channel == keys.CONTROL and body.get("node") == self._host.node_id:
            self._control(body)

    # -- ephemeral messages ------------------------------------------------------------------------------------

    async def publish_ephemeral(self, envelope: Envelope, data: bytes, exclude: str | None) -> Route:
        """Publish an ephemeral message to every other node; its route, for this node to route it at once."""
        route: Route = [self._host.node_id, data.decode(), envelope.type, envelope.priority, envelope.target]
        route += [envelope.topic, exclude]
        await self._host.call(self._host.redis.publish(keys.EPHEMERAL, _json.encode(route)))
        return route

    def route_ephemeral(self, route: Route) -> int:
        """Hand an ephemeral message to this worker's streams; the connections it was written to."""
        streams = self._host.streams
        assert streams is not None
        _, data, event, priority, target, topic, exclude = route
        raw = data if isinstance(data, bytes) else str(data).encode()
        frame = Frame(raw, event=event, priority=priority)
        return streams.deliver(frame, target=target, topic=topic, exclude=exclude).delivered

    # -- controls ----------------------------------------------------------------------------------------------

    def _control(self, body: dict[str, Any]) -> None:
        handler = self._control_ops.get(str(body.get("op")))
        if handler is not None:
            handler(body)

    def _close_replaced(self, body: dict[str, Any]) -> None:
        streams = self._host.streams
        assert streams is not None
        conn_id = int(body["conn"])
        if streams.get(conn_id) is not None:
            streams.closed_replaced += 1
            streams.close(conn_id, str(body.get("reason", "replaced")))

    def on_control(self, op: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler(body)`` (on the loop; it must not block) for ``sse:control`` messages of ``op`` that name
        this node (``body["node"]``)."""
        self._control_ops[op] = handler

    async def send_control(self, body: dict[str, Any]) -> None:
        """Publish a control message; the node named ``body["node"]`` acts on it."""
        await self._host.call(self._host.redis.publish(keys.CONTROL, _json.encode(body)))

    # -- live topic changes on another node --------------------------------------------------------------------

    async def retopic(
        self, node: str, conn: int, *, add: tuple[str, ...], remove: frozenset[str], wait: float
    ) -> tuple[str, ...] | None:
        """Ask ``node`` to change its stream ``conn``'s patterns (remove, then add), as
        :meth:`Broker.change_stream_topics` answers there: the new set, None when the stream is gone, or the
        refusal it raised (its status, code and detail), raised here. Raises ``TimeoutError`` when the node does
        not answer within ``wait`` seconds."""
        token = secrets.token_hex(8)
        future = self._replies[token] = asyncio.get_running_loop().create_future()
        body = {"op": "topics", "node": node, "from": self._host.node_id, "reply": token, "conn": conn}
        try:
            await self.send_control({**body, "add": list(add), "remove": sorted(remove)})
            answer = await asyncio.wait_for(future, wait)
        finally:
            self._replies.pop(token, None)
        refused = answer.get("error")
        if isinstance(refused, dict):
            raise HttpError(
                int(refused["status"]), str(refused["code"]), str(refused["message"]), refused.get("detail")
            )
        topics = answer.get("topics")
        return tuple(str(t) for t in topics) if isinstance(topics, list) else None

    def _retopic_answered(self, body: dict[str, Any]) -> None:
        future = self._replies.get(str(body.get("reply")))
        if future is not None and not future.done():
            future.set_result(body)

    def _retopic_here(self, body: dict[str, Any]) -> None:
        serving = asyncio.get_running_loop().create_task(self._serve_retopic(body))
        self._serving.add(serving)
        serving.add_done_callback(self._serving.discard)

    async def _serve_retopic(self, body: dict[str, Any]) -> None:
        """Change one of this node's streams as another node asked (it checked the caller), and answer it: the new
        set, or the refusal of the change (the stream owner's grants, the bounds)."""
        reply: dict[str, Any] = {"op": "topics_reply", "node": body.get("from"), "reply": body.get("reply")}
        try:
            add = tuple(str(t) for t in body.get("add", ()))
            remove = frozenset(str(t) for t in body.get("remove", ()))
            public_id = f"{self._host.node_id}.{int(body['conn'])}"
            topics = await self._host.change_stream_topics(public_id, add=add, remove=remove)
            reply["topics"] = None if topics is None else list(topics)
        except HttpError as err:
            reply["error"] = {"status": err.status, "code": err.code, "message": err.message, "detail": err.detail}
        except Exception:  # a malformed control: the asking node times out (504) rather than this node failing
            log.exception("could not change a stream's topics as asked by node %s", body.get("from"))
            return
        with contextlib.suppress(RedisError, OSError, HttpError):
            await self.send_control(reply)
