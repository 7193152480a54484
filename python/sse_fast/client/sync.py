"""The blocking client: :class:`SyncClient`, the async :class:`~sse_fast.client.Client` run on a thread of its own.

For code without an event loop (Django, Flask, Celery, scripts). A :class:`SyncClient` starts one daemon thread that
runs an event loop, makes a :class:`~sse_fast.client.Client` on it, and forwards each call with
:func:`asyncio.run_coroutine_threadsafe`, blocking until the answer: every behaviour (reconnecting, the outbound
queue, acks, tasks, the errors raised) is the async client's own. Handlers and ``on_progress`` callbacks run on the
client's thread; :meth:`SyncClient.messages` is a blocking iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, Unpack, cast, overload

from sse_fast.client._client import Client
from sse_fast.client.answers import CommandAnswer, PublishAnswer, TaskRecord, TasksAnswer
from sse_fast.client.connection import State
from sse_fast.client.tasks import Action, CommandAction, CommandOptions
from sse_fast.models import Envelope

__all__ = ["SyncClient"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _blocking(method: Callable[Concatenate[Client, _P], Awaitable[_R]]) -> Callable[Concatenate[SyncClient, _P], _R]:
    """The blocking form of an async :class:`Client` method: the same arguments, the same answer or error."""

    def call(self: SyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._wait(method(self._client, *args, **kwargs))

    call.__name__, call.__qualname__ = method.__name__, f"SyncClient.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


def _on_loop(method: Callable[Concatenate[Client, _P], _R]) -> Callable[Concatenate[SyncClient, _P], _R]:
    """A plain :class:`Client` method, called on the client's thread (its state belongs to that loop)."""

    async def run(client: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(client, *args, **kwargs)

    call = _blocking(run)
    call.__name__, call.__qualname__ = method.__name__, f"SyncClient.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class SyncClient:
    """A blocking client of an sse-fast server: the same options, names and behaviour as :class:`Client`.

    ::

        with SyncClient("http://127.0.0.1:8000", client_id="alice") as client:
            client.send_text("hello", target="bob")

    ``with`` (or :meth:`connect`) opens the stream and waits until it is connected (``auto_connect=False``: only
    sending); :meth:`close` (or leaving ``with``) ends the client and its thread. Handlers registered with
    :meth:`subscribe` run on the client's thread: keep them short, or hand the work over.
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._closing = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="sse-fast sync client", daemon=True)
        self._thread.start()

        async def make() -> Client:
            return Client(base_url, **options)

        try:
            self._client = self._wait(make())
        except BaseException:
            self._stop_loop()
            raise

    def _wait(self, awaitable: Awaitable[_R]) -> _R:
        """Run ``awaitable`` on the client's loop and block until it is done: its result, or its error raised."""
        if threading.current_thread() is self._thread:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError("a blocking SyncClient call from a handler (its own thread) would wait forever")

        async def run() -> _R:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        while True:
            try:
                return future.result(timeout=0.25)
            except TimeoutError:
                # A call that raced with close() may have been scheduled on a loop that has stopped: it would
                # never run, and waiting for it would block this thread for ever.
                if not self._thread.is_alive():
                    future.cancel()
                    raise RuntimeError("the SyncClient is closed") from None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> SyncClient:
        try:
            self._wait(self._client.__aenter__())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (:meth:`Client.close`) and stop its thread. Idempotent."""
        if self._loop.is_closed():
            return
        self._closing = True  # before the iterators end: they must not schedule anything on the stopping loop
        try:
            self._wait(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    connect = _blocking(Client.connect)

    # -- sending ---------------------------------------------------------------------------------------------

    send = _blocking(Client.send)
    send_text = _blocking(Client.send_text)
    send_json = _blocking(Client.send_json)
    ack = _blocking(Client.ack)

    # -- presence --------------------------------------------------------------------------------------------

    presence = _blocking(Client.presence)

    # -- live topic changes ----------------------------------------------------------------------------------

    subscribe_topics = _blocking(Client.subscribe_topics)
    unsubscribe_topics = _blocking(Client.unsubscribe_topics)

    # -- tasks -----------------------------------------------------------------------------------------------

    run_task = _blocking(Client.run_task)
    query_progress = _blocking(Client.query_progress)
    cancel_task = _blocking(Client.cancel_task)
    pause_task = _blocking(Client.pause_task)
    resume_task = _blocking(Client.resume_task)

    @overload
    def send_command(
        self, action: CommandAction, *, target: None = None, **options: Unpack[CommandOptions]
    ) -> CommandAnswer: ...
    @overload
    def send_command(
        self, action: Literal["query"], *, target: None = None, **options: Unpack[CommandOptions]
    ) -> TaskRecord: ...
    @overload
    def send_command(
        self, action: Literal["sync"], *, target: None = None, **options: Unpack[CommandOptions]
    ) -> TasksAnswer: ...
    @overload
    def send_command(self, action: Action, *, target: str, **options: Unpack[CommandOptions]) -> PublishAnswer: ...

    def send_command(
        self, action: Action, *, target: str | None = None, **options: Unpack[CommandOptions]
    ) -> CommandAnswer | TaskRecord | TasksAnswer | PublishAnswer:
        """Send a command (:meth:`Client.send_command`: the same options, and the answer typed by the action)."""
        answer = self._wait(self._client.send_command(action, target=target, **options))
        return cast("CommandAnswer | TaskRecord | TasksAnswer | PublishAnswer", answer)

    # -- receiving -------------------------------------------------------------------------------------------

    subscribe = _on_loop(Client.subscribe)
    once = _on_loop(Client.once)
    on_state_change = _on_loop(Client.on_state_change)
    history = _on_loop(Client.history)
    stats = _on_loop(Client.stats)

    def messages(self, *, system: bool = False, heartbeats: bool = False) -> Iterator[Envelope]:
        """A blocking iterator over the messages (:meth:`Client.messages`: the same buffering, end and errors)."""
        iterator = self._client.messages(system=system, heartbeats=heartbeats)
        try:
            while True:
                try:
                    yield self._wait(anext(iterator))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closing:  # closing ends every iterator on the loop itself
                with contextlib.suppress(RuntimeError):
                    self._wait(iterator.aclose())

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``disconnected``, ``connecting``, ``connected``, ``reconnecting`` or ``error``."""
        return self._client.state

    @property
    def last_event_id(self) -> str | None:
        """The resume cursor (:attr:`Client.last_event_id`)."""
        return self._client.last_event_id

    @property
    def connection_info(self) -> dict[str, Any]:
        """``detail`` of the last ``connect`` event (:attr:`Client.connection_info`)."""
        return self._client.connection_info

    @property
    def client_id(self) -> str:
        """The client's id."""
        return self._client.client_id

    @property
    def topics(self) -> Iterable[str]:
        """The topic patterns of the stream."""
        return self._client.topics
