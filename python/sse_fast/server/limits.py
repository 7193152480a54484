"""Per-client publish limits: a token bucket per caller, in messages and in bytes (PROTOCOL.md section 3).

The replay log, the mailboxes and every connection queue are shared and bounded, so one client publishing fast
(70 messages of 1 MiB in half a second) would push everyone else's history out of the log, and their resumes would
report ``expired``. Each caller therefore spends from two buckets on every publish (``POST /api/messages``,
``/api/direct``, ``/api/broadcast``, and commands to the scheduler): one message from the first, the encoded
envelope's bytes from the second. A bucket holds at most its burst (``SSE_FAST_PUBLISH_BURST``,
``SSE_FAST_PUBLISH_BURST_BYTES``) and refills at its rate (``SSE_FAST_PUBLISH_RATE``,
``SSE_FAST_PUBLISH_BYTES_RATE``; 0 turns that bucket off). A publish that either bucket cannot pay is refused,
429 ``rate_limited`` with ``Retry-After`` (whole seconds, at least 1: when both buckets will hold enough), and
costs nothing: a refused client is not pushed further into debt.

Trusted publishers are not limited: ``X-API-Key`` callers (the ``server`` identity) and, under ``auth = jwt``,
tokens with the ``admin`` claim, so that back ends and the benchmarks are never slowed. Under ``auth = none`` every
caller is admin only because nobody is checked, so nobody is trusted there: callers are limited by the clientId
they name (which they choose; the limits are about care, not hostile callers, without authentication).

The buckets are per worker: with W workers a client may publish up to W times the rates (a load balancer that
keeps a client on one worker keeps it to one share). A worker tracks at most ``SSE_FAST_PUBLISH_LIMIT_CLIENTS``
callers; past it the least recently active one is forgotten. A bucket left alone for ``burst / rate`` seconds is
full again anyway, so forgetting the least recently active costs nothing unless that many clients are publishing
within that time, and then a forgotten client starts again with full buckets.

Presence (``GET /api/presence``) is limited the same way by :class:`PresenceLimits`: any caller with one topic
grant may ask, and each answer walks every connection row of the node or cluster (about 25 ms per 100,000 rows, on
the event loop), so one client may ask ``SSE_FAST_PRESENCE_RATE`` times a second (burst
``SSE_FAST_PRESENCE_BURST``) per worker; the same callers are exempt, and as many clients are tracked.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import msgspec

from sse_fast.errors import HttpError
from sse_fast.models import Envelope
from sse_fast.server.auth import Identity
from sse_fast.settings import Settings

__all__ = ["PresenceLimits", "PublishLimits"]

_encode: Final = msgspec.json.Encoder().encode


class _Bucket:
    """One caller's tokens: messages and bytes, as of ``at`` (the clock's seconds)."""

    __slots__ = ("at", "bytes", "messages")

    def __init__(self, messages: float, size: float, at: float) -> None:
        self.messages = messages
        self.bytes = size
        self.at = at


def _trusted(caller: Identity, jwt: bool) -> bool:
    """Whether ``caller`` is never limited: an API key, or a JWT admin (under ``auth = none`` nobody is checked, so
    nobody is trusted)."""
    return caller.kind == "api_key" or (jwt and caller.admin)


class _Buckets:
    """Token buckets keyed by clientId, in least-recently-used order: at most ``max_clients``, past it the least
    recently active is forgotten (it would have refilled anyway unless that many clients spend within
    ``burst / rate``). A new bucket starts full; each :meth:`take` refills it for the time since the last."""

    def __init__(
        self,
        max_clients: int,
        clock: Callable[[], float],
        burst: float,
        rate: float,
        burst_bytes: float,
        bytes_rate: float,
    ) -> None:
        self.max_clients = max_clients
        self.burst, self.rate = burst, rate
        self.burst_bytes, self.bytes_rate = burst_bytes, bytes_rate
        self._clock = clock
        self._held: OrderedDict[str, _Bucket] = OrderedDict()
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._held)

    def take(self, client_id: str) -> _Bucket:
        """The client's bucket, refilled up to now (the caller spends from it)."""
        now = self._clock()
        bucket = self._held.get(client_id)
        if bucket is None:
            bucket = self._held[client_id] = _Bucket(self.burst, self.burst_bytes, now)
            if len(self._held) > self.max_clients:
                self._held.popitem(last=False)
                self.forgotten += 1
            return bucket
        self._held.move_to_end(client_id)
        elapsed = now - bucket.at
        bucket.messages = min(self.burst, bucket.messages + elapsed * self.rate)
        bucket.bytes = min(self.burst_bytes, bucket.bytes + elapsed * self.bytes_rate)
        bucket.at = now
        return bucket


class PublishLimits:
    """The publish buckets of one worker, keyed by clientId, in least-recently-used order."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = settings.publish_rate
        self.burst = settings.publish_burst
        self.bytes_rate = settings.publish_bytes_rate
        self.burst_bytes = settings.publish_burst_bytes
        self.max_clients = settings.publish_limit_clients
        self._jwt = settings.auth == "jwt"
        self._buckets = _Buckets(self.max_clients, clock, self.burst, self.rate, self.burst_bytes, self.bytes_rate)
        self.refused = 0

    def trusted(self, caller: Identity) -> bool:
        """Whether ``caller`` publishes without limits: an API key, or a JWT admin."""
        return _trusted(caller, self._jwt)

    def charge(self, caller: Identity, envelope: Envelope) -> None:
        """Spend one message and the envelope's encoded size from the caller's buckets, or raise 429
        ``rate_limited`` (with ``Retry-After``) and spend nothing."""
        if (not self.rate and not self.bytes_rate) or self.trusted(caller):
            return
        # A message may be a little larger than the body limit once stamped (id, timestamp, source); capped at the
        # burst it still passes, with full buckets.
        size = min(len(_encode(envelope)), self.burst_bytes) if self.bytes_rate else 0
        bucket = self._buckets.take(caller.client_id)
        wait = 0.0
        if self.rate and bucket.messages < 1:
            wait = (1 - bucket.messages) / self.rate
        if self.bytes_rate and bucket.bytes < size:
            wait = max(wait, (size - bucket.bytes) / self.bytes_rate)
        if wait > 0:
            self.refused += 1
            seconds = max(1, math.ceil(wait))
            limit = "messages" if self.rate and bucket.messages < 1 else "bytes"
            raise HttpError(
                429,
                "rate_limited",
                f"this client publishes faster than its limit allows; retry in {seconds} s",
                {"limit": limit, "retryAfter": seconds},
                retry_after=seconds,
            )
        bucket.messages -= 1
        bucket.bytes -= size

    def counters(self) -> dict[str, int]:
        """For ``/metrics``: refusals, the buckets held, and the buckets forgotten past the limit."""
        return {
            "publish_rate_limited": self.refused,
            "publish_limit_clients": len(self._buckets),
            "publish_limit_forgotten": self._buckets.forgotten,
        }


class PresenceLimits:
    """The presence buckets of one worker (requests only), keyed by clientId, in least-recently-used order."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = settings.presence_rate
        self.burst = settings.presence_burst
        self._jwt = settings.auth == "jwt"
        self._buckets = _Buckets(settings.publish_limit_clients, clock, self.burst, self.rate, 0, 0)
        self.refused = 0

    def charge(self, caller: Identity) -> None:
        """Spend one request from the caller's bucket, or raise 429 ``rate_limited`` (with ``Retry-After``) and spend
        nothing. API keys and JWT admins are not limited (as :meth:`PublishLimits.trusted`)."""
        if not self.rate or _trusted(caller, self._jwt):
            return
        bucket = self._buckets.take(caller.client_id)
        if bucket.messages < 1:
            self.refused += 1
            seconds = max(1, math.ceil((1 - bucket.messages) / self.rate))
            raise HttpError(
                429,
                "rate_limited",
                f"this client asks for presence faster than its limit allows; retry in {seconds} s",
                {"limit": "presence", "retryAfter": seconds},
                retry_after=seconds,
            )
        bucket.messages -= 1

    def counters(self) -> dict[str, int]:
        """For ``/metrics``: refusals and the buckets held."""
        return {"presence_rate_limited": self.refused, "presence_limit_clients": len(self._buckets)}
