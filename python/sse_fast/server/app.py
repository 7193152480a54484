"""The server: :class:`App`, one worker's routes, streams, broker and scheduler, and :func:`create_app`.

``App`` speaks both granian interfaces with the same routes, streams and broker; the interface-specific code is
in :mod:`sse_fast.server.rsgi` and :mod:`sse_fast.server.asgi`, twins with the same shape. :mod:`sse_fast.app` holds the
instance that ``granian sse_fast.app:app`` runs; importing this module builds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from typing import Any

from sse_fast.broker import Broker, create_broker
from sse_fast.models import new_message_id
from sse_fast.scheduler import task_registry
from sse_fast.scheduler.core import Scheduler
from sse_fast.server import asgi as _asgi
from sse_fast.server import rsgi as _rsgi
from sse_fast.server.auth import Authenticator, AuthHook
from sse_fast.server.backlog import BacklogWatch
from sse_fast.server.commands import CommandService
from sse_fast.server.handshake import Handshake
from sse_fast.server.metrics import Metrics, shared_dir
from sse_fast.server.routes import Api
from sse_fast.settings import Settings
from sse_fast.streams import Streams

__all__ = ["App", "create_app"]

log = logging.getLogger("sse_fast")


class App:
    """One worker's server: routes, streams, broker and scheduler, behind the RSGI and ASGI entry points.

    ``auth``: an auth hook (:data:`~sse_fast.server.auth.AuthHook`) that identifies every caller in place of
    ``SSE_FAST_AUTH``, tokens and API keys (:mod:`sse_fast.mount`).
    """

    def __init__(self, settings: Settings, *, scheduler: Scheduler | None = None, auth: AuthHook | None = None) -> None:
        self.settings = settings
        self.node_id = secrets.token_hex(3)
        self.broker: Broker = create_broker(settings)
        self.streams = Streams(settings, id_prefix=f"{self.broker.epoch}-", node_id=self.node_id, new_id=new_message_id)
        self.broker.attach(self.streams)
        self.metrics = Metrics(share=shared_dir(settings))
        self.metrics.bind(self.streams, self.broker)
        self.streams.fanout_observer = self.metrics.fanout_seconds.observe
        self.scheduler = scheduler or Scheduler()
        self.scheduler.bind(self.broker, settings)
        self.streams.add_tick_job(self.scheduler.tick)
        self.auth = Authenticator(settings, hook=auth)
        self.tasks = task_registry(self.scheduler, self.broker)
        self.commands = CommandService(self.scheduler, self.tasks, auth=self.auth)
        self.handshake = Handshake(settings, broker=self.broker, streams=self.streams, metrics=self.metrics)
        self.api = Api(
            settings,
            broker=self.broker,
            streams=self.streams,
            auth=self.auth,
            commands=self.commands,
            metrics=self.metrics,
            handshake=self.handshake,
        )
        # Started in startup(), once the loop is known; its dead-peer sweep runs on the streams' ticker.
        self.backlog = BacklogWatch(settings.queue_bytes, self._cut, keepalive=settings.keepalive)
        self.streams.hub.report_bytes = self.backlog.step  # the hub's writers count bytes for the watch
        self.streams.add_tick_job(self.backlog.sweep)
        self.metrics.bind_watch(self.backlog)
        self.metrics.add_source(lambda: {"rsgi_backlog_checks": self.backlog.checks})
        self.metrics.add_source(lambda: {f"scheduler_{k}": v for k, v in self.scheduler.counters().items()})
        self._started = False

    # -- lifecycle, shared by both interfaces ------------------------------------------------------------------

    def startup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker's ticker and hook SIGTERM (idempotent). ``loop`` may not be running yet."""
        if self._started:
            return
        self._started = True
        if self.auth.mode == "none":
            log.warning("SSE_FAST_AUTH=none: every caller is trusted as the client it names, and is admin")
        self.streams.start(loop)
        self.broker.start(loop)
        self.backlog.start(loop.call_soon)
        self.scheduler.start(loop)
        self.streams.add_tick_job(self.metrics.tick)  # only a started worker shares its metrics
        self._hook_signals()
        log.info("sse-fast worker ready (broker %s, epoch %s)", type(self.broker).__name__, self.broker.epoch)

    def _cut(self, conn_id: int, reason: str) -> None:
        self.streams.close(conn_id, reason)

    def _hook_signals(self) -> None:
        """Run :meth:`begin_shutdown` on SIGTERM/SIGINT, before granian's own handler.

        granian waits for every open connection to end before it calls the app's shutdown hooks, and open streams
        never end by themselves: the maintenance frame has to go out from the signal, not from those hooks.
        """
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                self.begin_shutdown()
                if callable(previous):
                    previous(signum, frame)

            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (an embedding server): its own shutdown path applies
                return

    def begin_shutdown(self) -> None:
        """Cancel the running tasks (their ``task_cancelled`` events go out first), refuse new streams, and send
        every open one ``maintenance`` with a spread ``retry:``, then close it."""
        self.scheduler.shutdown()
        if self.streams.accepting:
            log.info("shutting down: closing %d stream(s) with a maintenance notice", len(self.streams))
            self.streams.announce_maintenance()

    async def shutdown(self) -> None:
        """The last step of a worker's life (granian's ``__rsgi_del__`` or the ASGI lifespan)."""
        if not self._started:
            return
        self._started = False
        self.begin_shutdown()
        await self.scheduler.close()
        self.streams.stop()
        self.metrics.close()
        await self.broker.close()

    # -- the two interfaces ------------------------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.startup(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.is_running():
            loop.create_task(self.shutdown())
        else:
            loop.run_until_complete(self.shutdown())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        await _rsgi.serve(self, scope, protocol)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _asgi.serve(self, scope, receive, send)


def create_app(
    settings: Settings | None = None, *, scheduler: Scheduler | None = None, auth: AuthHook | None = None
) -> App:
    """Build the application from ``settings`` (default: ``Settings.from_env()``), running ``scheduler``'s tasks;
    ``auth``, an auth hook, identifies the callers instead of ``SSE_FAST_AUTH`` (:mod:`sse_fast.mount`)."""
    return App(settings or Settings.from_env(), scheduler=scheduler, auth=auth)
