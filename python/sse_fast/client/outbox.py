"""The outbound queue: sends wait in a bounded priority queue and are retried until the server takes them.

The sender (:meth:`Client._send_loop`) holds messages in the bounded Rust :class:`~sse_fast._core.PriorityQueue`
while the client is disconnected or the server answers 429/503, and retries them after :data:`RETRY_DELAYS`. When
the queue is full, a message evicts the oldest one of a lower priority, or is refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx
import msgspec

from sse_fast._core import PriorityQueue
from sse_fast.client._base import _answer_error, _ClientBase, _json, _retry_after, log
from sse_fast.client.answers import AckAnswer, CommandAnswer, Priority, PublishAnswer, TaskRecord, TasksAnswer
from sse_fast.errors import ConnectionLostError, QueueFullError, ServerError
from sse_fast.models import Envelope, new_message_id

__all__ = ["RETRY_DELAYS", "Answer"]

Answer = PublishAnswer | CommandAnswer | AckAnswer | TaskRecord | TasksAnswer
"""Every answer a call of the client may get (each call is typed with its own one)."""

_A = TypeVar("_A")

RETRY_DELAYS: Final[tuple[float, ...]] = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds between the attempts of one send (429, 503, network errors); a ``Retry-After`` can only lengthen them."""


@dataclass(slots=True)
class _Outgoing:
    path: str
    body: bytes
    priority: int
    answer: type[Any]
    future: asyncio.Future[Any]
    attempts: int = 0
    refreshed: bool = False


class _Outbox(_ClientBase):
    """The outbound queue of :class:`~sse_fast.client.Client`: sends, their queue and the sender that retries them."""

    def _init_outbox(self) -> None:
        self._outbox: PriorityQueue[_Outgoing] = PriorityQueue(max_items=self._queue_size)
        self._outbox_ready = asyncio.Event()
        self._in_flight: _Outgoing | None = None

    # -- sending ---------------------------------------------------------------------------------------------

    async def send(self, message: Envelope) -> PublishAnswer:
        """Queue ``message`` and wait for the server's answer.

        The message gets an id when it has none, so a retried send is accepted once (the server deduplicates by
        id). It waits while the stream is (re)connecting and when the server answers 429/503, and is retried
        after :data:`RETRY_DELAYS` (a ``Retry-After`` lengthens a delay); then fails with
        :class:`~sse_fast.errors.ServerError` or :class:`~sse_fast.errors.ConnectionLostError`. Other errors
        fail at once (:class:`~sse_fast.errors.ServerError`, :class:`~sse_fast.errors.AuthError`). When the queue
        is full, the oldest message of a lower priority is evicted (its send fails with
        :class:`~sse_fast.errors.QueueFullError`), or, when there is none, this one is refused.

        A ``command`` for the scheduler (no ``target``) goes through :meth:`send_command`, which answers the
        scheduler's types; here it is a ``ValueError``.
        """
        if message.type == "command" and message.target is None:
            raise ValueError("a command for the scheduler is sent with send_command()")
        return await self._send_envelope(message, PublishAnswer)

    async def _send_envelope(self, message: Envelope, answer: type[_A]) -> _A:
        if message.id is None:
            message = msgspec.structs.replace(message, id=new_message_id())
        path = "/api/commands" if message.type == "command" and message.target is None else "/api/messages"
        return await self._submit(path, _json.encode(message), message.priority, answer)

    async def send_text(
        self,
        text: str,
        *,
        target: str | None = None,
        topic: str | None = None,
        priority: int = Priority.NORMAL,
        require_ack: bool = False,
    ) -> PublishAnswer:
        """Send a ``text`` message (``payload`` is ``text``); no ``target`` and no ``topic`` is a broadcast."""
        return await self.send(
            Envelope(type="text", payload=text, target=target, topic=topic, priority=priority, require_ack=require_ack)
        )

    async def send_json(
        self,
        obj: Any,
        *,
        target: str | None = None,
        topic: str | None = None,
        priority: int = Priority.NORMAL,
        require_ack: bool = False,
    ) -> PublishAnswer:
        """Send a ``json`` message with ``obj`` as its payload."""
        return await self.send(
            Envelope(type="json", payload=obj, target=target, topic=topic, priority=priority, require_ack=require_ack)
        )

    async def _submit(self, path: str, body: bytes, priority: int, answer: type[_A]) -> _A:
        if self._closed:
            raise ConnectionLostError("the client is closed")
        if self._fatal is not None:
            raise self._fatal
        self._start_workers()
        item = _Outgoing(path, body, priority, answer, asyncio.get_running_loop().create_future())
        self._enqueue(item)
        result: _A = await item.future
        return result

    def _enqueue(self, item: _Outgoing) -> None:
        queue = self._outbox
        if len(queue) >= queue.max_items and not any(queue.depths()[: item.priority]):
            self._counts["dropped"] += 1
            waiting = len(queue)
            item.future.set_exception(
                QueueFullError(f"the outbound queue is full ({waiting} messages of priority >= {item.priority} wait)")
            )
            return
        result = queue.push(item, item.priority, resumable=False)
        for evicted in result.evicted:
            self._counts["dropped"] += 1
            if not evicted.future.done():
                evicted.future.set_exception(
                    QueueFullError(f"evicted from the full outbound queue by a priority {item.priority} message")
                )
        if result.outcome != "accepted":
            self._counts["dropped"] += 1
            item.future.set_exception(QueueFullError("the outbound queue is full"))
            return
        self._outbox_ready.set()

    async def _send_loop(self) -> None:
        while True:
            item = self._outbox.pop()
            if item is None:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            if item.future.done():  # the caller gave up (cancelled)
                continue
            self._in_flight = item
            try:
                await self._deliver(item)
            finally:
                self._in_flight = None

    async def _deliver(self, item: _Outgoing) -> None:
        while not item.future.done():
            if self._stream_wanted:
                await self._until_connected()  # while the server is unreachable, wait for the stream to return
            error, floor = await self._post(item)
            if error is None:
                return
            item.attempts += 1
            if item.attempts > len(RETRY_DELAYS):
                if not item.future.done():
                    item.future.set_exception(error)
                return
            delay = max(RETRY_DELAYS[item.attempts - 1], floor or 0.0)
            log.info("send to %s failed (%s); retrying in %.1fs", item.path, error, delay)
            await asyncio.sleep(delay)

    async def _post(self, item: _Outgoing) -> tuple[BaseException | None, float | None]:
        """One attempt; resolves the future when done, else returns the retryable error and a Retry-After."""
        await self._ensure_token()
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            response = await self._http.post(
                f"{self.base_url}{item.path}", content=item.body, headers=headers, timeout=self.connection_timeout
            )
        except httpx.HTTPError as err:
            return ConnectionLostError(f"{type(err).__name__}: {err}"), None
        status = response.status_code
        if status in (429, 503):
            return _answer_error(status, response.content), _retry_after(response.headers)
        if status == 401 and not item.refreshed and await self._refresh_token():
            item.refreshed = True  # once per send: a token that a fresh call does not fix is refused
            return await self._post(item)
        if item.future.done():
            return None, None
        if 200 <= status < 300:
            try:
                answer = msgspec.json.decode(response.content, type=item.answer)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                item.future.set_exception(ServerError(f"unexpected answer: {err}", status=status, code="bad_answer"))
                return None, None
            self._counts["sent"] += 1
            item.future.set_result(answer)
        else:
            item.future.set_exception(_answer_error(status, response.content))
        return None, None
