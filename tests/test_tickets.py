"""Stream tickets (server/tickets.py): a token exchanged for a one-time ticket that opens one stream, on one node or
on any node of a Redis cluster; a bounded store with its metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _redis import running_redis
from _servers import Server, open_stream, running_server

pytestmark = pytest.mark.e2e

SECRET = "a-test-secret-of-at-least-32-bytes-long!"
JWT = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


def ticket(server: Server, headers: dict[str, str]) -> str:
    response = httpx.post(f"{server.url}/api/tickets", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"ticket", "expiresIn"}
    assert 0 < body["expiresIn"] <= 30
    value: str = body["ticket"]
    return value


def metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("tickets"), env=JWT) as srv:
        yield srv


async def test_a_ticket_opens_one_stream_with_the_tokens_identity_and_grants(server: Server) -> None:
    value = ticket(server, bearer("ann", topics=["t.*"]))
    async with open_stream(server.url, client_id="", topics="t.*", query=f"ticket={value}") as stream:
        assert stream.status == 200
        [connect] = await stream.count("system", 1)
        assert connect["payload"]["detail"]["clientId"] == "ann"
    again = httpx.get(f"{server.url}/sse?ticket={value}")
    assert (again.status_code, again.json()["code"]) == (401, "invalid_ticket")


async def test_the_ticket_keeps_the_grants_and_the_client_id(server: Server) -> None:
    value = ticket(server, bearer("bea", topics=["t.*"]))
    async with open_stream(server.url, client_id="", topics="other.*", query=f"ticket={value}") as stream:
        assert stream.status == 403  # topic_not_granted, as with the token itself
    value = ticket(server, bearer("bea"))
    async with open_stream(server.url, client_id="someone", query=f"ticket={value}") as stream:
        assert stream.status == 403  # client_id_mismatch


def test_tickets_need_a_client_token(server: Server) -> None:
    missing = httpx.post(f"{server.url}/api/tickets")
    assert (missing.status_code, missing.json()["code"]) == (401, "missing_token")
    bad = httpx.post(f"{server.url}/api/tickets", headers={"Authorization": "Bearer nope"})
    assert (bad.status_code, bad.json()["code"]) == (401, "invalid_token")
    unknown = httpx.get(f"{server.url}/sse?ticket=never-issued")
    assert (unknown.status_code, unknown.json()["code"]) == (401, "invalid_ticket")


def test_the_store_is_bounded_and_tickets_expire(tmp_path: Path) -> None:
    env = {**JWT, "SSE_FAST_TICKETS_MAX": "3", "SSE_FAST_TICKET_TTL": "1"}
    with running_server(tmp_path, env=env) as server:
        _bounded_and_expiring(server)


def _bounded_and_expiring(server: Server) -> None:
    refused_before = metric(server, "sse_fast_tickets_refused_total")
    issued = [ticket(server, bearer(f"c{i}")) for i in range(3)]
    full = httpx.post(f"{server.url}/api/tickets", headers=bearer("c9"))
    assert (full.status_code, full.json()["code"]) == (429, "too_many_tickets")
    assert full.headers["retry-after"] == "1"
    assert metric(server, "sse_fast_tickets_refused_total") == refused_before + 1
    assert metric(server, "sse_fast_tickets_held") == 3
    deadline = time.monotonic() + 10
    while httpx.post(f"{server.url}/api/tickets", headers=bearer("c9")).status_code != 200:  # after the TTL
        assert time.monotonic() < deadline, "tickets did not expire"
        time.sleep(0.1)  # ok-sleep: waiting out the ticket TTL, with a deadline
    expired = httpx.get(f"{server.url}/sse?ticket={issued[0]}")
    assert (expired.status_code, expired.json()["code"]) == (401, "invalid_ticket")


def test_api_keys_and_anonymous_callers_get_no_ticket(tmp_path: Path) -> None:
    env = {"SSE_FAST_API_KEYS": "k" * 16}
    with running_server(tmp_path, env=env) as srv:
        keyed = httpx.post(f"{srv.url}/api/tickets", headers={"X-API-Key": "k" * 16})
        assert (keyed.status_code, keyed.json()["code"]) == (403, "ticket_not_allowed")
        anonymous = httpx.post(f"{srv.url}/api/tickets")
        assert (anonymous.status_code, anonymous.json()["code"]) == (400, "invalid_client_id")
        named = ticket(srv, {"X-Client-Id": "dan"})  # auth = none: the same rule, the named client
        opened = httpx.get(f"{srv.url}/sse?ticket={named}&clientId=eve")
        assert (opened.status_code, opened.json()["code"]) == (403, "client_id_mismatch")


@pytest.mark.redis
async def test_a_ticket_from_one_node_opens_a_stream_on_another_once(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis_server:
        env = {**JWT, "SSE_FAST_BROKER": redis_server.url}
        with running_server(tmp_path, env=env) as first, running_server(tmp_path, env=env) as second:
            value = ticket(first, bearer("fay"))
            async with open_stream(second.url, client_id="", query=f"ticket={value}") as stream:
                assert stream.status == 200
                [connect] = await stream.count("system", 1)
                assert connect["payload"]["detail"]["clientId"] == "fay"
            reused = httpx.get(f"{first.url}/sse?ticket={value}")
            assert (reused.status_code, reused.json()["code"]) == (401, "invalid_ticket")
            assert metric(second, "sse_fast_tickets_redeemed_total") == 1
            assert metric(first, "sse_fast_tickets_issued_total") == 1
