"""The per-client publish buckets (server/limits.py) on a clock the test drives: rates, bursts, Retry-After, trust."""

from __future__ import annotations

from typing import Any

import pytest

from sse_fast.errors import HttpError
from sse_fast.models import Envelope
from sse_fast.server.auth import Identity
from sse_fast.server.limits import PublishLimits
from sse_fast.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, **settings: Any) -> PublishLimits:
    return PublishLimits(Settings(**settings), clock=clock)


def client(name: str = "alice", **fields: Any) -> Identity:
    return Identity(client_id=name, kind=fields.pop("kind", "client"), **fields)


def message(size: int = 10) -> Envelope:
    return Envelope(type="json", payload="x" * size, target="alice", source="alice", id="m1", timestamp=1)


def refused(limiter: PublishLimits, caller: Identity, envelope: Envelope) -> HttpError:
    with pytest.raises(HttpError) as err:
        limiter.charge(caller, envelope)
    return err.value


def test_the_message_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = limits(clock, publish_rate=2.0, publish_burst=3)
    for _ in range(3):
        limiter.charge(client(), message())
    err = refused(limiter, client(), message())
    assert (err.status, err.code, err.detail["limit"]) == (429, "rate_limited", "messages")
    assert err.retry_after == 1  # half a second to one token, rounded up to a whole second
    clock.now += 0.5
    limiter.charge(client(), message())  # one token back
    refused(limiter, client(), message())
    assert limiter.counters()["publish_rate_limited"] == 2


def test_bytes_refuse_with_the_seconds_until_they_are_back() -> None:
    clock = Clock()
    limiter = limits(clock, max_body=1000, publish_bytes_rate=100, publish_burst_bytes=1000)
    limiter.charge(client(), message(800))
    err = refused(limiter, client(), message(800))
    assert err.detail["limit"] == "bytes"
    assert 7 <= err.retry_after <= 9  # about 800 bytes short at 100 bytes/s
    clock.now += err.retry_after
    limiter.charge(client(), message(800))  # the refusal cost nothing: the wait it named was enough


def test_a_message_larger_than_the_burst_passes_with_full_buckets() -> None:
    clock = Clock()
    limiter = limits(clock, max_body=1000, publish_bytes_rate=100, publish_burst_bytes=1000)
    limiter.charge(client(), message(1500))  # stamping made it larger than the body limit: charged the burst


def test_clients_have_buckets_of_their_own() -> None:
    limiter = limits(Clock(), publish_rate=1.0, publish_burst=1)
    limiter.charge(client("alice"), message())
    refused(limiter, client("alice"), message())
    limiter.charge(client("bob"), message())


@pytest.mark.parametrize(
    ("auth", "caller", "limited"),
    [
        ("jwt", Identity(client_id="server", kind="api_key", admin=True), False),
        ("none", Identity(client_id="server", kind="api_key", admin=True), False),
        ("jwt", Identity(client_id="ops", kind="client", admin=True), False),
        ("jwt", Identity(client_id="alice", kind="client"), True),
        ("none", Identity(client_id="alice", kind="client", admin=True), True),  # everyone is admin under none
        ("none", Identity(client_id="anonymous", kind="anonymous", admin=True), True),
    ],
    ids=["api-key-jwt", "api-key-none", "jwt-admin", "jwt-client", "none-client", "none-anonymous"],
)
def test_trusted_publishers_are_not_limited(auth: str, caller: Identity, limited: bool) -> None:
    extra = {"jwt_secret": "s" * 40} if auth == "jwt" else {}
    limiter = limits(Clock(), auth=auth, publish_rate=1.0, publish_burst=1, **extra)
    limiter.charge(caller, message())
    if limited:
        refused(limiter, caller, message())
    else:
        for _ in range(100):
            limiter.charge(caller, message())


def test_zero_rates_turn_the_limits_off() -> None:
    limiter = limits(Clock(), publish_rate=0.0, publish_bytes_rate=0)
    for _ in range(1000):
        limiter.charge(client(), message(1000))
    assert limiter.counters()["publish_limit_clients"] == 0  # not even a bucket is kept


def test_the_least_recently_active_bucket_is_forgotten_past_the_limit() -> None:
    limiter = limits(Clock(), publish_rate=1.0, publish_burst=1, publish_limit_clients=2)
    limiter.charge(client("a"), message())
    limiter.charge(client("b"), message())
    refused(limiter, client("a"), message())  # touches a: b is now the least recently active
    limiter.charge(client("c"), message())
    assert limiter.counters() == {
        "publish_rate_limited": 1,
        "publish_limit_clients": 2,
        "publish_limit_forgotten": 1,
    }
    limiter.charge(client("b"), message())  # forgotten: it starts again with a full bucket
    refused(limiter, client("c"), message())  # c was remembered (and a forgotten in turn)
