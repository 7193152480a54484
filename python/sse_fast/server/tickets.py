"""Stream tickets: a JWT exchanged for a one-time ticket, so that no long-lived token goes into a URL.

``EventSource`` cannot send an ``Authorization`` header, and a token in the query ends up in logs and histories. So
a browser first calls ``POST /api/tickets`` with its token (in the header, as every API call) and gets
``{"ticket", "expiresIn"}``: a random ticket valid for ``SSE_FAST_TICKET_TTL`` seconds (at most 30) that opens one
stream, ``GET /sse?ticket=...``, with the identity and grants of the token it came from, once.

One rule on both brokers: a ticket is stored with its deadline in a store bounded by ``SSE_FAST_TICKETS_MAX`` (past
it ``429 too_many_tickets``), and taking it out is atomic, so it opens one stream only. With the memory broker the
store is this worker's dict; with Redis it is ``sse:ticket:<ticket>`` (``PX`` the TTL) plus the index
``sse:tickets`` (a sorted set of deadlines that bounds the count), so a ticket issued by one node opens a stream on
any other.
"""

from __future__ import annotations

import abc
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Annotated, ClassVar, Final

import msgspec
from msgspec import Meta

from sse_fast.broker import Broker
from sse_fast.errors import AuthFailure, ErrorBody, HttpError
from sse_fast.server.auth import Authenticator, Identity
from sse_fast.server.http import Request, Response, Route, api_route, json_response
from sse_fast.settings import Settings

if TYPE_CHECKING:
    from sse_fast.broker.redis import RedisBroker

__all__ = ["MemoryTickets", "RedisTickets", "TicketAnswer", "TicketService", "TicketStore"]

TICKET_PREFIX: Final = "sse:ticket:"
"""Redis: one key per ticket (its identity as JSON), expiring with the ticket."""
TICKET_INDEX: Final = "sse:tickets"
"""Redis: the sorted set of live tickets by deadline (ms), which bounds their count cluster-wide."""

# KEYS: index, ticket key. ARGV: ticket, ttl ms, max, identity. Returns the live count, or -1 when full.
_ISSUE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[3]) then return -1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[2])
return held + 1
"""

_identity = msgspec.json.Decoder(Identity)


class TicketAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    """``200`` of ``POST /api/tickets``: a one-time ticket for ``GET /sse?ticket=...``."""

    ticket: Annotated[str, Meta(description="Opens one stream, with the identity and grants of the caller.")]
    expires_in: Annotated[float, Meta(gt=0, le=30, description="Seconds the ticket stays valid.")]


class TicketStore(abc.ABC):
    """Where tickets wait to be used: bounded (``SSE_FAST_TICKETS_MAX``), each valid ``SSE_FAST_TICKET_TTL``."""

    held_metric: ClassVar[str] = "tickets_held"
    """The gauge of :attr:`held`: this worker's own store (summed over the workers), or the cluster's."""

    def __init__(self, settings: Settings) -> None:
        self.ttl = settings.ticket_ttl
        self.limit = settings.tickets_max
        self.issued = 0
        self.redeemed = 0
        self.refused = 0
        self.held = 0

    async def issue(self, identity: Identity) -> str:
        """A new ticket for ``identity``; ``429 too_many_tickets`` when the store is full."""
        ticket = secrets.token_urlsafe(32)
        if not await self._put(ticket, msgspec.json.encode(identity)):
            self.refused += 1
            raise HttpError(429, "too_many_tickets", "too many stream tickets are waiting to be used", retry_after=1)
        self.issued += 1
        return ticket

    async def redeem(self, ticket: str) -> Identity | None:
        """The identity of ``ticket``, once: None when it is unknown, used or expired."""
        if not 0 < len(ticket) <= 64:
            return None
        data = await self._take(ticket)
        if data is None:
            return None
        self.redeemed += 1
        return _identity.decode(data)

    def counters(self) -> dict[str, int]:
        """For ``/metrics``: tickets held (as last seen), issued, redeemed, and refused because the store was full."""
        return {
            self.held_metric: self.held,
            "tickets_issued": self.issued,
            "tickets_redeemed": self.redeemed,
            "tickets_refused": self.refused,
        }

    @abc.abstractmethod
    async def _put(self, ticket: str, identity: bytes) -> bool:
        """Store ``ticket``; False when the store is full."""

    @abc.abstractmethod
    async def _take(self, ticket: str) -> bytes | None:
        """Remove ``ticket`` and return its identity, if it is there and valid."""


class MemoryTickets(TicketStore):
    """The memory broker's store: this worker's tickets, oldest first (they all live ``ttl``, so also by deadline)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._tickets: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._tickets:
            deadline, _ = next(iter(self._tickets.values()))
            if deadline > now:
                break
            self._tickets.popitem(last=False)

    async def _put(self, ticket: str, identity: bytes) -> bool:
        now = time.monotonic()
        self._expire(now)
        if len(self._tickets) >= self.limit:
            return False
        self._tickets[ticket] = (now + self.ttl, identity)
        self.held = len(self._tickets)
        return True

    async def _take(self, ticket: str) -> bytes | None:
        now = time.monotonic()
        self._expire(now)
        entry = self._tickets.pop(ticket, None)
        self.held = len(self._tickets)
        return None if entry is None else entry[1]


class RedisTickets(TicketStore):
    """The Redis broker's store: a ticket issued on one node opens a stream on any node of the cluster."""

    held_metric = "cluster_tickets_held"  # every worker sees the one store: a cluster gauge, never summed

    def __init__(self, settings: Settings, broker: RedisBroker) -> None:
        super().__init__(settings)
        self._broker = broker
        self._issue = broker.redis.register_script(_ISSUE)

    async def _put(self, ticket: str, identity: bytes) -> bool:
        ttl_ms = max(1, round(self.ttl * 1000))
        keys = [TICKET_INDEX, TICKET_PREFIX + ticket]
        held = int(await self._broker.call(self._issue(keys=keys, args=[ticket, ttl_ms, self.limit, identity])))
        if held < 0:
            return False
        self.held = held
        return True

    async def _take(self, ticket: str) -> bytes | None:
        async with self._broker.redis.pipeline(transaction=True) as pipe:
            pipe.getdel(TICKET_PREFIX + ticket)
            pipe.zrem(TICKET_INDEX, ticket)
            data, _ = await self._broker.call(pipe.execute())
        return data if isinstance(data, bytes) else None


def ticket_store(settings: Settings, broker: Broker) -> TicketStore:
    """The store that fits ``broker``: shared in Redis, or this worker's own."""
    if settings.broker != "memory":
        from sse_fast.broker.redis import RedisBroker  # redis-py is imported only when it is used

        if isinstance(broker, RedisBroker):
            return RedisTickets(settings, broker)
    return MemoryTickets(settings)


class TicketService:
    """``POST /api/tickets``, and the ticket side of ``GET /sse``."""

    def __init__(self, settings: Settings, broker: Broker, auth: Authenticator) -> None:
        self.store = ticket_store(settings, broker)
        self.auth = auth

    def routes(self) -> list[Route]:
        """The ``/api/tickets`` endpoint."""
        summary = "A one-time ticket (valid at most 30 s) for GET /sse?ticket=..., so that no token goes into a URL"
        return [api_route("POST", "/api/tickets", self.issue, summary, None, {200: TicketAnswer, 429: ErrorBody,
                                                                            503: ErrorBody})]  # fmt: skip

    async def issue(self, req: Request) -> Response:
        """``POST /api/tickets``: the caller's identity and grants, as a ticket for one stream."""
        caller = self.auth.caller(req)
        if caller.kind == "api_key":
            raise AuthFailure(403, "ticket_not_allowed", "API keys are for the HTTP API; a stream needs a client")
        if caller.kind == "anonymous":
            raise AuthFailure(400, "invalid_client_id", "a ticket opens a client's stream: name the client")
        ticket = await self.store.issue(caller)
        return json_response(200, TicketAnswer(ticket=ticket, expires_in=self.store.ttl))

    async def stream_identity(self, ticket: str, claimed: str | None) -> Identity:
        """The identity a ``ticket`` names (used up by this call); ``claimed`` is the stream's ``clientId`` query."""
        identity = await self.store.redeem(ticket)
        if identity is None:
            raise AuthFailure(401, "invalid_ticket", "the ticket is unknown, used or expired")
        if claimed and claimed != identity.client_id:
            raise AuthFailure(403, "client_id_mismatch", "the clientId differs from the ticket's client")
        return identity
