"""Locust load test for any sse-fast server: publishers, subscribers and command users.

- ``PublisherUser`` (``FastHttpUser``): ``POST /api/messages`` to topics and to clients, ``POST /api/broadcast``,
  with a mix of types and priorities. Each message carries its send time in ``payload.sentAt`` (ms).
- ``SubscriberUser``: holds one stream (``GET /sse``) and fires a locust request event ``SSE receive <type>`` per
  message, its response time being the publish -> receive latency.
- ``CommandUser``: holds a stream, runs the demo ``sleep`` task through ``POST /api/commands`` and times it until
  its ``task_completed`` event arrives (``task sleep``).

Every publish that the server accepted is entered in a ledger with the subscribers that were live when it was sent;
at the end of the run a message that one of them never received (and that was sent at least ``GRACE`` seconds
before the end) is a lost message, and a message received twice a duplicate. Either makes the run fail (exit 1),
as does any failed request.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000      # the web UI
    python loadtest/run.py --host http://my-server:8000                  # headless, with CSV and HTML reports
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent import socket
from locust import User, between, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment

log = logging.getLogger("loadtest")

TOPICS = [f"news.{i}" for i in range(8)]
TYPES = ["json", "text", "progress", "order.update"]
GRACE = float(os.environ.get("LOADTEST_GRACE", "3"))  # seconds a message may still be in flight at the end
# sse-fast has a scheduler: a 503 scheduler_unavailable is a failure, unless the server is known to run without one.
TOLERATE_NO_SCHEDULER = os.environ.get("LOADTEST_ALLOW_NO_SCHEDULER", "") == "1"


# -- the ledger: what must arrive where ------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Live subscribers, accepted publishes and what each subscriber received (one locust process)."""

    live: dict[str, tuple[str, ...]] = field(default_factory=dict)  # clientId -> topics
    sent: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)  # message id -> (time, recipients)
    received: dict[str, set[str]] = field(default_factory=dict)  # clientId -> message ids
    duplicates: int = 0
    stopped_at: float = 0.0

    def recipients(self, *, topic: str | None = None, target: str | None = None) -> frozenset[str]:
        if target is not None:
            return frozenset([target]) if target in self.live else frozenset()
        if topic is not None:
            return frozenset(c for c, topics in self.live.items() if topic in topics)
        return frozenset(self.live)

    def lost(self) -> list[tuple[str, str]]:
        """(message id, clientId) pairs due before the end minus the grace period, and never received."""
        deadline = (self.stopped_at or time.time()) - GRACE
        return [
            (mid, client)
            for mid, (at, recipients) in self.sent.items()
            if at <= deadline
            for client in recipients
            if mid not in self.received.get(client, ())
        ]


ledger = Ledger()


# -- a stream, read with a plain gevent socket -------------------------------------------------------------------------


class Stream:
    """``GET /sse`` over a socket: dechunks the body and yields ``(event, data)`` per frame."""

    def __init__(self, base_url: str, client_id: str, topics: tuple[str, ...]) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        query = f"clientId={client_id}" + (f"&topics={','.join(topics)}" if topics else "")
        self.request = (
            f"GET /sse?{query} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\naccept: text/event-stream\r\n\r\n"
        )
        self.sock: Any = None
        self.buf = b""
        self.chunked = False

    def open(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=30)
        self.sock.sendall(self.request.encode())
        head = self._until(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise ConnectionError(f"GET /sse answered {status.decode()}: {self.buf[:200]!r}")
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        self.sock.settimeout(None)

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the stream")
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._recv()
        out, self.buf = self.buf[:i], self.buf[i + len(sep) :]
        return out

    def _body(self) -> bytes:
        if not self.chunked:
            if not self.buf:
                self._recv()
            out, self.buf = self.buf, b""
            return out
        size = int(self._until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            raise ConnectionError("the server ended the stream")
        while len(self.buf) < size + 2:
            self._recv()
        out, self.buf = self.buf[:size], self.buf[size + 2 :]
        return out

    def frames(self) -> Any:
        pending = b""
        while True:
            pending += self._body()
            *blocks, pending = pending.split(b"\n\n")
            for block in blocks:
                event, data = "message", []
                for line in block.split(b"\n"):
                    if line.startswith(b"event: "):
                        event = line[7:].decode()
                    elif line.startswith(b"data: "):
                        data.append(line[6:])
                if data:
                    yield event, b"\n".join(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _fire(env: Environment, kind: str, name: str, ms: float, length: int, exc: Exception | None = None) -> None:
    env.events.request.fire(
        request_type=kind, name=name, response_time=ms, response_length=length, exception=exc, context={}
    )


# -- users -----------------------------------------------------------------------------------------------------------


class SubscriberUser(User):
    """Holds one stream and reports the latency of every message it receives."""

    weight = 6
    wait_time = between(1, 1)

    def on_start(self) -> None:
        self.client_id = f"sub-{secrets.token_hex(4)}"
        self.topics = tuple(random.sample(TOPICS, 2))
        self.stream = Stream(self.host, self.client_id, self.topics)
        self.seen: set[str] = ledger.received.setdefault(self.client_id, set())

    def on_stop(self) -> None:
        ledger.live.pop(self.client_id, None)
        self.stream.close()

    @task
    def listen(self) -> None:
        started = time.time()
        try:
            self.stream.open()
            for event, data in self.stream.frames():
                self._frame(event, data, started)
        except (ConnectionError, OSError, ValueError) as err:
            ledger.live.pop(self.client_id, None)
            _fire(self.environment, "SSE", "stream", (time.time() - started) * 1000, 0, err)
            gevent.sleep(1)
            self.stream = Stream(self.host, self.client_id, self.topics)

    def _frame(self, event: str, data: bytes, started: float) -> None:
        envelope = json.loads(data)
        if event == "system":
            if envelope["payload"].get("event") == "connect":
                ledger.live[self.client_id] = self.topics
                _fire(self.environment, "SSE", "connect", (time.time() - started) * 1000, len(data))
            return
        if event == "heartbeat":
            return
        payload = envelope.get("payload")
        sent_at = payload.get("sentAt") if isinstance(payload, dict) else None
        if sent_at is None:
            return
        mid = envelope["id"]
        if mid in self.seen:
            ledger.duplicates += 1
            _fire(self.environment, "SSE", "duplicate", 0, len(data), RuntimeError(f"duplicate {mid}"))
            return
        self.seen.add(mid)
        _fire(self.environment, "SSE", f"receive {event}", max(0.0, time.time() * 1000 - sent_at), len(data))


class PublisherUser(FastHttpUser):
    """Publishes a realistic mix: topics, direct messages to live subscribers, and a few broadcasts."""

    weight = 2
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        # Each publisher names itself (auth=none): the server limits publishing per client (SSE_FAST_PUBLISH_RATE),
        # and all of them as one `anonymous` would be one client publishing at the whole test's rate.
        self.headers = {"x-client-id": f"pub-{secrets.token_hex(4)}"}

    def _envelope(self, **route: Any) -> dict[str, Any]:
        kind = random.choice(TYPES)
        body = {"note": "x" * random.randint(10, 200), "sentAt": time.time() * 1000}
        payload: Any = body if kind != "progress" else {**body, "progress": random.randint(0, 100)}
        return {
            "id": f"lt-{secrets.token_hex(8)}",
            "type": kind,
            "priority": random.choices([0, 1, 2, 3], weights=[1, 6, 2, 1])[0],
            "payload": payload,
            **route,
        }

    def _send(self, path: str, body: dict[str, Any], envelope: dict[str, Any], recipients: frozenset[str]) -> None:
        sent = time.time()
        with self.client.post(path, json=body, headers=self.headers, name=path, catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            ledger.sent[envelope["id"]] = (sent, recipients)

    @task(5)
    def topic(self) -> None:
        topic = random.choice(TOPICS)
        envelope = self._envelope(topic=topic)
        self._send("/api/messages", envelope, envelope, ledger.recipients(topic=topic))

    @task(3)
    def direct(self) -> None:
        if not ledger.live:
            return
        target = random.choice(list(ledger.live))
        envelope = self._envelope(target=target)
        self._send("/api/messages", envelope, envelope, ledger.recipients(target=target))

    @task(1)
    def broadcast(self) -> None:
        envelope = self._envelope()
        self._send("/api/broadcast", {"message": envelope}, envelope, ledger.recipients())


class CommandUser(FastHttpUser):
    """Runs the demo ``sleep`` task and times it from submission to its ``task_completed`` event."""

    weight = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.client_id = f"cmd-{secrets.token_hex(4)}"
        self.done: dict[str, tuple[float, str]] = {}  # taskId -> (time, outcome event)
        self.stream = Stream(self.host, self.client_id, ())
        self.stream.open()
        self.reader = gevent.spawn(self._read)
        self.unavailable = False

    def on_stop(self) -> None:
        self.reader.kill()
        self.stream.close()

    def _read(self) -> None:
        try:
            for event, data in self.stream.frames():
                if event != "command":
                    continue
                payload = json.loads(data).get("payload") or {}
                if payload.get("event") in ("task_completed", "task_failed", "task_timed_out", "task_cancelled"):
                    self.done[payload.get("taskId", "")] = (time.time(), payload["event"])
        except (ConnectionError, OSError) as err:
            _fire(self.environment, "SSE", "command stream", 0, 0, err)

    @task
    def sleep_task(self) -> None:
        if self.unavailable:
            gevent.sleep(5)
            return
        seconds = random.choice([0.05, 0.1, 0.2])
        command = {
            "type": "command",
            "priority": 2,
            "payload": {
                "commandId": f"c-{secrets.token_hex(6)}",
                "action": "execute",
                "task": "sleep",
                "params": {"seconds": seconds},
            },
        }
        started = time.time()
        # auth=none: the caller names itself; the task events then come to this user's stream.
        headers = {"x-client-id": self.client_id}
        with self.client.post(
            "/api/commands", json=command, headers=headers, name="/api/commands", catch_response=True
        ) as resp:
            if resp.status_code == 503 and TOLERATE_NO_SCHEDULER and "scheduler_unavailable" in resp.text:
                resp.success()
                self.unavailable = True
                log.warning("no scheduler on this server: command users idle (LOADTEST_ALLOW_NO_SCHEDULER=1)")
                return
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            task_id = resp.json()["taskId"]
        self._await_task(task_id, started, seconds)

    def _await_task(self, task_id: str, started: float, seconds: float) -> None:
        deadline = started + seconds + 10
        while task_id not in self.done and time.time() < deadline:
            gevent.sleep(0.01)
        if task_id not in self.done:
            _fire(self.environment, "TASK", "task sleep", 10_000, 0, TimeoutError(f"no outcome for {task_id}"))
            return
        at, outcome = self.done.pop(task_id)
        elapsed = (at - started) * 1000
        failure = None if outcome == "task_completed" else RuntimeError(f"{task_id}: {outcome}")
        _fire(self.environment, "TASK", "task sleep", elapsed, 0, failure)


# -- the verdict -----------------------------------------------------------------------------------------------------


@events.test_stopping.add_listener
def _stopping(environment: Environment, **_: Any) -> None:
    ledger.stopped_at = time.time()


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    if not ledger.stopped_at:
        ledger.stopped_at = time.time()
    lost = ledger.lost()
    checked = sum(len(r) for at, r in ledger.sent.values() if at <= ledger.stopped_at - GRACE)
    stats = environment.stats.total
    print(
        f"\nloadtest verdict: {len(ledger.sent)} messages accepted, {checked} deliveries checked, "
        f"{len(lost)} lost, {ledger.duplicates} duplicated, {stats.num_failures} failed requests",
        flush=True,
    )
    for mid, client in lost[:10]:
        print(f"  lost: {mid} -> {client}", flush=True)
    if lost or ledger.duplicates or stats.num_failures:
        environment.process_exit_code = 1
