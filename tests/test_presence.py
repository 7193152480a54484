"""GET /api/presence (issue 16): who receives a topic now, and how many, on one node or the whole cluster.

Against real servers under ``auth = jwt``, one suite over both brokers (memory, and Redis with its own
redis-server); the cross-node counts and a killed node's connections on Redis with two nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

import _brokers
from _redis import running_redis
from _servers import Server, Stream, kill_node, open_stream, running_server
from sse_fast import Client, SyncClient
from sse_fast.client import PresenceAnswer
from sse_fast.errors import AuthError, ServerError
from sse_fast.models import ConnectionInfo

pytestmark = [pytest.mark.e2e]

SECRET = "a-secret-of-at-least-thirty-two-bytes"
JWT = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600} | claims, SECRET, algorithm="HS256")


ADMIN = token("boss", admin=True)


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp(f"presence-{request.param}")
    if request.param == "memory":
        with running_server(directory, env=JWT) as srv:
            yield srv
        return
    with running_redis(directory) as redis, running_server(directory, env=JWT | {"SSE_FAST_BROKER": redis.url}) as srv:
        yield srv


def presence(server: Server, query: str, tok: str = ADMIN) -> httpx.Response:
    return httpx.get(f"{server.url}/api/presence?{query}", headers={"Authorization": f"Bearer {tok}"}, timeout=10)


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not met in {timeout}s: {what}"
        time.sleep(0.05)  # ok-sleep: polling another process's state with a deadline


@contextlib.asynccontextmanager
async def subscribed(server: Server, client_id: str, topics: str) -> AsyncIterator[Stream]:
    """A connected stream of ``client_id`` on ``topics``, its token granting exactly those."""
    tok = token(client_id, topics=topics.split(","))
    async with open_stream(server.url, client_id="", topics=topics, query=f"token={tok}") as stream:
        assert stream.status == 200, bytes(stream.raw)
        await stream.wait_for(lambda s: bool(s.system("connect")))
        yield stream


def listed(answer: dict[str, Any]) -> dict[str, int]:
    return {c["clientId"]: c["connections"] for c in answer["clients"]}


async def test_counts_the_clients_whose_patterns_admit_the_topic(server: Server) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for client_id, topics in [
            ("alice", "cp.orders.*"),
            ("alice", "cp.orders.*,cp.other"),  # a second connection of the same client
            ("bob", "cp.orders.eu"),
            ("carol", "cp.>"),
            ("dave", "cp.orders.us"),
            ("erin", "cp.orders.eu.north"),  # deeper: `cp.orders.eu` does not reach it
        ]:
            await stack.enter_async_context(subscribed(server, client_id, topics))
        answer = presence(server, "topic=cp.orders.eu").json()
        assert answer == {
            "topic": "cp.orders.eu",
            "scope": "cluster",
            "count": 3,
            "connections": 4,
            "clients": [
                {"clientId": "alice", "connections": 2},
                {"clientId": "bob", "connections": 1},
                {"clientId": "carol", "connections": 1},
            ],
            "truncated": False,
            "limit": 100,
        }
        assert listed(presence(server, "topic=cp.orders.us").json()) == {"alice": 2, "carol": 1, "dave": 1}
        assert listed(presence(server, "topic=cp.other").json()) == {"alice": 1, "carol": 1}
        assert presence(server, "topic=cp.nobody.here").json()["count"] == 1  # carol's cp.>
        node = presence(server, "topic=cp.orders.eu&scope=node").json()
        assert (node["scope"], node["count"], node["connections"]) == ("node", 3, 4)
        async with subscribed(server, "frank", "cp.orders.eu"):
            assert listed(presence(server, "topic=cp.orders.eu").json())["frank"] == 1
    # Closed streams stop counting.
    eventually(lambda: presence(server, "topic=cp.orders.eu").json()["count"] == 0, "closed streams withdrawn")
    assert presence(server, "topic=cp.orders.eu").json()["clients"] == []


async def test_a_read_grant_on_the_topic_or_admin_is_required(server: Server) -> None:
    async with subscribed(server, "watched", "gr.room.1"):
        granted = token("reader", topics=["gr.room.*"])
        assert listed(presence(server, "topic=gr.room.1", granted).json()) == {"watched": 1}
        assert listed(presence(server, "topic=gr.room.1", ADMIN).json()) == {"watched": 1}
        for refused_token in (token("reader", topics=["gr.room.2"]), token("nobody"), token("pub", publish=[">"])):
            refused = presence(server, "topic=gr.room.1", refused_token)
            assert refused.status_code == 403, refused.text
            assert refused.json()["code"] == "topic_not_granted"
            assert "watched" not in refused.text
        anonymous = httpx.get(f"{server.url}/api/presence?topic=gr.room.1", timeout=10)
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "missing_token")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "invalid_topic"),
        ("topic=", "invalid_topic"),
        ("topic=orders.*", "invalid_topic"),  # a pattern: presence is asked of a concrete topic
        ("topic=orders.>", "invalid_topic"),
        ("topic=a..b", "invalid_topic"),
        ("topic=a%0Ab", "invalid_topic"),
        (f"topic={'a' * 129}", "invalid_topic"),
        ("topic=a&scope=world", "invalid_scope"),
        ("topic=a&limit=-1", "invalid_limit"),
        ("topic=a&limit=ten", "invalid_limit"),
        ("topic=a&limit=%D9%A3", "invalid_limit"),  # an Arabic-Indic 3: a digit, but not ASCII
    ],
)
def test_bad_parameters_are_400(server: Server, query: str, code: str) -> None:
    answer = presence(server, query)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["code"] == code
    assert set(answer.json()) <= {"error", "code", "detail"}


async def test_the_list_is_bounded_the_counts_exact(server: Server) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for i in range(5):
            await stack.enter_async_context(subscribed(server, f"tr{i}", "tr.x"))
        two = presence(server, "topic=tr.x&limit=2").json()
        assert (two["count"], two["connections"], two["truncated"], two["limit"]) == (5, 5, True, 2)
        assert listed(two) == {"tr0": 1, "tr1": 1}
        counts_only = presence(server, "topic=tr.x&limit=0").json()
        assert (counts_only["count"], counts_only["clients"], counts_only["truncated"]) == (5, [], True)
        exact = presence(server, "topic=tr.x&limit=5").json()
        assert (len(exact["clients"]), exact["truncated"]) == (5, False)
        capped = presence(server, f"topic=tr.x&limit={'9' * 5000}").json()
        assert (capped["limit"], capped["truncated"]) == (1000, False)
    eventually(lambda: presence(server, "topic=tr.x&limit=0").json()["count"] == 0, "closed streams withdrawn")
    assert presence(server, "topic=tr.x&limit=0").json()["truncated"] is False  # nobody left out


async def test_the_sdks_answer_typed(server: Server) -> None:
    async with subscribed(server, "sdk-watched", "sdk.a.*"):
        async with Client(server.url, client_id="boss", token=ADMIN, auto_connect=False) as client:
            answer = await client.presence("sdk.a.b", limit=10)
            assert isinstance(answer, PresenceAnswer)
            assert (answer.count, answer.connections, answer.scope, answer.truncated) == (1, 1, "cluster", False)
            assert [(c.client_id, c.connections) for c in answer.clients] == [("sdk-watched", 1)]
            node = await client.presence("sdk.a.b", scope="node", limit=0)
            assert (node.scope, node.count, node.clients) == ("node", 1, [])
            with pytest.raises(ServerError) as bad:
                await client.presence("sdk.*")
            assert (bad.value.status, bad.value.code) == (400, "invalid_topic")
        reader = token("reader", topics=["elsewhere"])
        async with Client(server.url, client_id="reader", token=reader, auto_connect=False) as client:
            with pytest.raises(AuthError):
                await client.presence("sdk.a.b")
        with SyncClient(server.url, client_id="boss", token=ADMIN, auto_connect=False) as sync:
            answer = sync.presence("sdk.a.b")
            assert isinstance(answer, PresenceAnswer)
            assert [c.client_id for c in answer.clients] == ["sdk-watched"]


# -- a cluster of two nodes on Redis --------------------------------------------------------------------------


@contextlib.contextmanager
def two_nodes(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with running_redis(tmp_path) as redis, contextlib.ExitStack() as stack:
        env = JWT | {"SSE_FAST_BROKER": redis.url, "SSE_FAST_HEARTBEAT": "1"}
        yield (
            stack.enter_context(running_server(tmp_path, env=env)),
            stack.enter_context(running_server(tmp_path, env=env)),
        )


@pytest.mark.redis
async def test_the_cluster_counts_every_node_and_forgets_a_killed_one(tmp_path: Path) -> None:
    with two_nodes(tmp_path) as (a, b):
        async with (
            subscribed(a, "on-a", "cl.t"),
            subscribed(b, "on-b", "cl.*"),
            subscribed(b, "on-both", "cl.t"),
            subscribed(a, "on-both", "cl.>"),
        ):
            expected = {"on-a": 1, "on-b": 1, "on-both": 2}
            for node in (a, b):

                def sees_all(node: Server = node) -> bool:
                    return listed(presence(node, "topic=cl.t").json()) == expected

                eventually(sees_all, "every node sees both nodes' connections")
            assert listed(presence(a, "topic=cl.t&scope=node").json()) == {"on-a": 1, "on-both": 1}
            assert listed(presence(b, "topic=cl.t&scope=node").json()) == {"on-b": 1, "on-both": 1}
            assert presence(a, "topic=cl.t").json()["connections"] == 4
            kill_node(b)
            # B's rows stop counting once its heartbeat key expires (NODE_TTL, 15 s), without B withdrawing them.
            started = time.monotonic()
            eventually(lambda: listed(presence(a, "topic=cl.t").json()) == {"on-a": 1, "on-both": 1}, "B forgotten", 30)
            assert time.monotonic() - started < 25


def test_the_openapi_document_describes_it(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    operation = document["paths"]["/api/presence"]["get"]
    assert {"topic", "scope", "limit"} <= {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PresenceAnswer"}
    assert {"400", "401", "403", "429", "503"} <= set(operation["responses"])
    schema = document["components"]["schemas"]["PresenceAnswer"]
    live = presence(server, "topic=doc.t").json()
    assert set(live) == set(schema["properties"]) == set(schema["required"])


def test_a_client_is_rate_limited_admins_are_not(tmp_path: Path) -> None:
    # Regression (review finding 4): each answer walks every connection row, and one topic grant is enough to ask.
    env = JWT | {"SSE_FAST_PRESENCE_RATE": "0.01", "SSE_FAST_PRESENCE_BURST": "3"}  # a token per 100 s: no refill here
    with running_server(tmp_path, env=env) as srv:
        reader, other = token("reader", topics=["rl.*"]), token("other", topics=["rl.*"])
        assert [presence(srv, "topic=rl.x", reader).status_code for _ in range(3)] == [200] * 3
        refused = presence(srv, "topic=rl.x&scope=node", reader)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert presence(srv, "topic=rl.x", other).status_code == 200  # per client
        assert {presence(srv, "topic=rl.x").status_code for _ in range(10)} == {200}  # an admin token
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        assert "sse_fast_presence_rate_limited_total 1.0" in metrics
        assert "sse_fast_presence_limit_clients 2.0" in metrics


# -- the scan behind scope=cluster, in process on both brokers ------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "memory":
        yield None
        return
    with running_redis(tmp_path) as redis:
        yield redis.url


async def test_concurrent_requests_share_one_scan_of_the_rows(broker_url: str | None) -> None:
    """A caller with a topic grant may ask for presence: many requests at once must not each hold a copy of every
    row of the cluster. Requests that arrive while a scan runs share it; one that arrives after it gets a new one."""
    async with _brokers.running_app(broker_url) as app:
        broker = app.broker
        for client in ("s1", "s2", "s3"):
            await _brokers.open_stream(app, client, topics=("sc.*",))
        scans = 0
        scan = broker.connections

        async def counted() -> list[ConnectionInfo]:
            nonlocal scans
            scans += 1
            return await scan()

        broker.connections = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(broker.presence("sc.x", scope="cluster", limit=2) for _ in range(20)))
        assert scans == 1
        assert {(a.count, a.connections, a.truncated) for a in answers} == {(3, 3, True)}
        assert [c.client_id for c in answers[0].clients] == ["s1", "s2"]
        await _brokers.open_stream(app, "s4", topics=("sc.x",))
        later = await broker.presence("sc.x", scope="cluster", limit=0)
        assert (scans, later.count) == (2, 4)  # no answer outlives its scan
        node = await broker.presence("sc.x", scope="node", limit=10)
        assert (scans, node.count) == (2, 4)  # this worker's own rows need no scan
