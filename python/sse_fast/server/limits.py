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


class PublishLimits:
    """The publish buckets of one worker, keyed by clientId, in least-recently-used order."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = settings.publish_rate
        self.burst = settings.publish_burst
        self.bytes_rate = settings.publish_bytes_rate
        self.burst_bytes = settings.publish_burst_bytes
        self.max_clients = settings.publish_limit_clients
        self._jwt = settings.auth == "jwt"
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0
        self.forgotten = 0

    def trusted(self, caller: Identity) -> bool:
        """Whether ``caller`` publishes without limits: an API key, or a JWT admin."""
        return caller.kind == "api_key" or (self._jwt and caller.admin)

    def charge(self, caller: Identity, envelope: Envelope) -> None:
        """Spend one message and the envelope's encoded size from the caller's buckets, or raise 429
        ``rate_limited`` (with ``Retry-After``) and spend nothing."""
        if (not self.rate and not self.bytes_rate) or self.trusted(caller):
            return
        # A message may be a little larger than the body limit once stamped (id, timestamp, source); capped at the
        # burst it still passes, with full buckets.
        size = min(len(_encode(envelope)), self.burst_bytes) if self.bytes_rate else 0
        bucket = self._refill(caller.client_id)
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

    def _refill(self, client_id: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(client_id)
        if bucket is None:
            bucket = self._buckets[client_id] = _Bucket(self.burst, self.burst_bytes, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
                self.forgotten += 1
            return bucket
        self._buckets.move_to_end(client_id)
        elapsed = now - bucket.at
        bucket.messages = min(self.burst, bucket.messages + elapsed * self.rate)
        bucket.bytes = min(self.burst_bytes, bucket.bytes + elapsed * self.bytes_rate)
        bucket.at = now
        return bucket

    def counters(self) -> dict[str, int]:
        """For ``/metrics``: refusals, the buckets held, and the buckets forgotten past the limit."""
        return {
            "publish_rate_limited": self.refused,
            "publish_limit_clients": len(self._buckets),
            "publish_limit_forgotten": self.forgotten,
        }


class PresenceLimits:
    """The presence buckets of one worker (requests only), keyed by clientId, in least-recently-used order."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = settings.presence_rate
        self.burst = settings.presence_burst
        self.max_clients = settings.publish_limit_clients
        self._jwt = settings.auth == "jwt"
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0

    def charge(self, caller: Identity) -> None:
        """Spend one request from the caller's bucket, or raise 429 ``rate_limited`` (with ``Retry-After``) and spend
        nothing. API keys and JWT admins are not limited (as :meth:`PublishLimits.trusted`)."""
        if not self.rate or caller.kind == "api_key" or (self._jwt and caller.admin):
            return
        now = self._clock()
        bucket = self._buckets.get(caller.client_id)
        if bucket is None:
            bucket = self._buckets[caller.client_id] = _Bucket(self.burst, 0, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller.client_id)
            bucket.messages = min(self.burst, bucket.messages + (now - bucket.at) * self.rate)
            bucket.at = now
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
