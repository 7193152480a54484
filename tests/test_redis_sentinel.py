"""Redis Sentinel: nodes follow the primary Sentinel names, and a failover loses nothing silently (issue 18)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from _redis import SentinelGroup, running_sentinels
from _servers import Server, Stream, open_stream, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

DOWN_AFTER_MS = 1000
FAST = {"SSE_FAST_KEEPALIVE": "0.5", "SSE_FAST_HEARTBEAT": "1"}
#: A request that takes longer than this during the failover counts as a hang.
HANG = 5.0


@contextlib.contextmanager
def nodes(tmp_path: Path, group: SentinelGroup, n: int, **env: str) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_server(tmp_path, env={**FAST, "SSE_FAST_BROKER": group.url, **env}))
            for _ in range(n)
        ]


def metric(server: Server, name: str) -> float:
    """The value of a counter on one node (one worker: one sample)."""
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith((f"{name} ", f"{name}{{")):
            return float(line.rsplit(maxsplit=1)[1])
    raise AssertionError(f"{name} not in /metrics")


@dataclass
class Ledger:
    """Every request's outcome, with when it was answered."""

    accepted: dict[str, float] = field(default_factory=dict)  # message id -> when it was answered 2xx
    refused: list[float] = field(default_factory=list)  # when each 503 was answered
    slowest: float = 0.0
    other: list[str] = field(default_factory=list)  # anything but 2xx and 503 (a failure of the test)

    def answer(self, response: httpx.Response, started: float) -> bool:
        now = time.monotonic()
        self.slowest = max(self.slowest, now - started)
        if response.status_code == 503:
            assert response.headers.get("retry-after", "").isdigit(), response.headers
            self.refused.append(now)
            return False
        if response.status_code >= 300:
            self.other.append(f"{response.status_code} {response.text}")
            return False
        return True


async def publish(ledger: Ledger, server: Server, name: str, stop: asyncio.Event) -> None:
    """Publish to topic ``load`` one message after another, each with its own id, until ``stop``."""
    async with httpx.AsyncClient(timeout=30) as http:
        i = 0
        while not stop.is_set():
            message_id = f"{name}-{i}"
            i += 1
            body = {"id": message_id, "type": "json", "topic": "load", "payload": message_id}
            started = time.monotonic()
            response = await http.post(f"{server.url}/api/messages", json=body)
            if ledger.answer(response, started):
                ledger.accepted[message_id] = time.monotonic()
            else:
                await asyncio.sleep(0.05)  # ok-sleep: a client's pause after a 503 (not waiting for a condition)


@dataclass
class Subscriber:
    """A client on topic ``load`` that resumes with its cursor whenever its stream closes, like the SDKs."""

    client_id: str
    servers: list[Server]
    past: set[str] = field(default_factory=set)
    live: Stream | None = None
    connects: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    cursor: str = ""

    async def run(self, ledger: Ledger, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            server = self.servers[turn % len(self.servers)]
            turn += 1
            headers = {"Last-Event-ID": self.cursor} if self.cursor else {}
            started = time.monotonic()
            async with open_stream(server.url, client_id=self.client_id, topics="load", headers=headers) as stream:
                if stream.status != 200:
                    ledger.answer(
                        httpx.Response(stream.status, headers=stream.headers, content=bytes(stream.raw)), started
                    )
                    await asyncio.sleep(0.05)  # ok-sleep: a client's pause after a 503
                    continue
                await stream.wait_for(lambda s: bool(s.system("connect")) or s.closed.is_set())
                self.live = stream
                if stream.system("connect"):
                    self.connects.append((time.monotonic(), stream.system("connect")[0]["payload"]["detail"]))
                stopped = asyncio.ensure_future(stop.wait())
                closed = asyncio.ensure_future(stream.closed.wait())
                await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                closed.cancel()
                self.past, self.live = self.received, None
                self.cursor = stream.last_id or self.cursor

    @property
    def received(self) -> set[str]:
        """Every message this client received, on its past streams and the open one."""
        live = self.live.envelopes("json") if self.live is not None else []
        return self.past | {e["payload"] for e in live}

    def told_of_loss(self) -> float | None:
        """When this client was first told that it may have lost messages (a resume that was not), else None."""
        told = [at for at, detail in self.connects[1:] if detail["resumed"] is False and detail.get("reason")]
        return told[0] if told else None


async def test_a_failover_under_load_loses_nothing_silently_and_503s_last_at_most_down_after_plus_2s(
    tmp_path: Path,
) -> None:
    with running_sentinels(tmp_path, down_after_ms=DOWN_AFTER_MS) as group, nodes(tmp_path, group, 2) as (a, b):
        ledger = Ledger()
        stop_subscribers, stop_publishers = asyncio.Event(), asyncio.Event()
        subscribers = [Subscriber(f"sub{i}", [a, b] if i % 2 else [b, a]) for i in range(4)]
        readers = [asyncio.create_task(s.run(ledger, stop_subscribers)) for s in subscribers]
        deadline = time.monotonic() + 20
        while not all(s.connects for s in subscribers):
            assert time.monotonic() < deadline, "the subscribers did not connect"
            await asyncio.sleep(0.05)  # ok-sleep: polling with a deadline
        publishers = [
            asyncio.create_task(publish(ledger, node, name, stop_publishers)) for node, name in ((a, "a"), (b, "b"))
        ]
        while len(ledger.accepted) < 100:
            assert time.monotonic() < deadline, "the publishers made no progress before the failover"
            await asyncio.sleep(0.05)  # ok-sleep: polling with a deadline

        group.primary.kill()  # SIGKILL mid-load
        killed = time.monotonic()
        deadline = killed + 30
        while await asyncio.to_thread(group.primary_port) != group.replica.port:
            assert time.monotonic() < deadline, "Sentinel did not promote the replica"
            await asyncio.sleep(0.1)  # ok-sleep: polling with a deadline
        while sum(at > killed for at in ledger.accepted.values()) < 100:
            assert time.monotonic() < deadline, "no publish was accepted after the failover"
            await asyncio.sleep(0.05)  # ok-sleep: polling with a deadline
        stop_publishers.set()
        await asyncio.gather(*publishers)

        # Every subscriber ends with every accepted message, or was told that it may have lost some: then only
        # messages accepted before it was told may be missing.
        def settled(s: Subscriber) -> bool:
            missing = set(ledger.accepted) - s.received
            told = s.told_of_loss()
            return not missing or (told is not None and all(ledger.accepted[m] <= told for m in missing))

        deadline = time.monotonic() + 30
        while not all(settled(s) for s in subscribers):
            assert time.monotonic() < deadline, [
                (s.client_id, len(set(ledger.accepted) - s.received), s.connects[-1][1]) for s in subscribers
            ]
            await asyncio.sleep(0.1)  # ok-sleep: polling with a deadline
        stop_subscribers.set()
        await asyncio.gather(*readers)

        assert ledger.other == []
        assert ledger.slowest < HANG, f"a request took {ledger.slowest:.1f}s: a hang, not a 503"
        assert ledger.refused, "no request was refused: the failover was not under load"
        window = max(ledger.refused) - min(ledger.refused)
        assert window <= DOWN_AFTER_MS / 1000 + 2, f"503s for {window:.2f}s"
        # The promoted replica may lack the last writes: every stream was closed, and a cursor from before the
        # failover resumes as not resumed, with the reason.
        for s in subscribers:
            reasons = [detail.get("reason") for _, detail in s.connects[1:] if detail["resumed"] is False]
            assert "failover" in reasons, (s.client_id, s.connects)
        assert [metric(node, "sse_fast_broker_failovers_total") for node in (a, b)] == [1, 1]
        # After the failover the cluster works as before, on both nodes.
        async with open_stream(b.url, client_id="after", topics="load") as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            answer = httpx.post(f"{a.url}/api/messages", json={"type": "json", "topic": "load", "payload": "x"})
            assert answer.status_code == 202, answer.text
            await stream.wait_for(lambda s: [e["payload"] for e in s.envelopes("json")] == ["x"])


async def test_with_wait_replicas_a_publish_says_whether_the_replica_confirmed_it_and_a_retry_is_deduplicated(
    tmp_path: Path,
) -> None:
    wait = {"SSE_FAST_REDIS_WAIT_REPLICAS": "1", "SSE_FAST_REDIS_WAIT_TIMEOUT": "0.2"}
    with (
        running_sentinels(tmp_path) as group,
        nodes(tmp_path, group, 1, **wait) as (waits,),
        nodes(tmp_path, group, 1) as (plain,),
    ):
        body = {"id": "w-1", "type": "json", "topic": "t", "payload": 1}
        answer = httpx.post(f"{waits.url}/api/messages", json=body, timeout=10)
        assert (answer.status_code, answer.json()["replicated"]) == (202, True), answer.text
        broadcast = httpx.post(f"{waits.url}/api/broadcast", json={"message": {"type": "json", "payload": 2}})
        assert (broadcast.status_code, broadcast.json()["replicated"]) == (202, True), broadcast.text
        unwaited = httpx.post(f"{plain.url}/api/messages", json={"type": "json", "payload": 3}, timeout=10)
        assert unwaited.status_code == 202, unwaited.text
        assert "replicated" not in unwaited.json(), "without the setting the answer does not say"

        assert group.replica.proc is not None
        group.replica.proc.send_signal(signal.SIGSTOP)  # the replica stops acknowledging
        try:
            body = {"id": "w-2", "type": "json", "topic": "t", "payload": 4}
            started = time.monotonic()
            answer = httpx.post(f"{waits.url}/api/messages", json=body, timeout=10)
            assert (answer.status_code, answer.json()["replicated"]) == (202, False), answer.text
            assert time.monotonic() - started < HANG
            again = httpx.post(f"{waits.url}/api/messages", json=body, timeout=10)
            assert (again.status_code, again.json()["duplicate"]) == (200, True), again.text
            assert metric(waits, "sse_fast_publish_unreplicated_total") == 1
        finally:
            group.replica.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while True:  # the replica catches up, and confirms again
            answer = httpx.post(f"{waits.url}/api/messages", json={"type": "json", "payload": 5}, timeout=10)
            assert answer.status_code == 202, answer.text
            if answer.json()["replicated"]:
                break
            assert time.monotonic() < deadline, "the replica never confirmed again"
