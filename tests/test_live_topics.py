"""Live topic changes on an open stream (issue 16): ``POST /api/subscriptions`` and the SDKs' ``subscribe_topics``.

Against real servers on both brokers. With Redis there are two nodes: the stream is held by the first, and every
change is asked of the second, so that it travels over ``sse:control`` to the node that holds the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from _brokers import wait_until
from _redis import running_redis
from _servers import Server, Stream, open_stream, running_server
from sse_fast import AuthError, Client, SyncClient

pytestmark = pytest.mark.e2e

SECRET = "t" * 40
API_KEY = "live-topics-key-0123456789"
ENV = {
    "SSE_FAST_AUTH": "jwt",
    "SSE_FAST_JWT_SECRET": SECRET,
    "SSE_FAST_API_KEYS": API_KEY,
    "SSE_FAST_MAX_CONNECTIONS_PER_CLIENT": "1",  # a second stream replaces the first: how a test cuts a client's
}
ADMIN = {"X-API-Key": API_KEY}
GRANTS = ["news.>", "sport.*", "deep.>"]


def token(sub: str, topics: list[str] = GRANTS, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "topics": topics, **claims}, SECRET, algorithm="HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


@pytest.fixture(
    scope="module", params=[pytest.param("memory", id="memory"), pytest.param("redis", marks=pytest.mark.redis)]
)
def nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """``[holder, asked]``: the node that holds the test's streams and the one changes are asked of (the same
    process with the memory broker, another node on the same Redis with the Redis broker)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:
        if request.param == "memory":
            server = stack.enter_context(running_server(tmp_path, env=ENV))
            yield [server, server]
            return
        url = stack.enter_context(running_redis(tmp_path)).url
        yield [stack.enter_context(running_server(tmp_path, env={**ENV, "SSE_FAST_BROKER": url})) for _ in range(2)]


def change(server: Server, connection_id: str, headers: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/subscriptions", json={"connectionId": connection_id, **body}, headers=headers, timeout=15
    )


def publish(server: Server, topic: str, payload: Any) -> None:
    response = httpx.post(
        f"{server.url}/api/messages", json={"type": "json", "topic": topic, "payload": payload}, headers=ADMIN
    )
    assert response.status_code == 202, response.text


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert {"error", "code"} <= set(body) <= {"error", "code", "detail"}, body
    return response.status_code, body["code"]


async def connected(stream: Stream) -> str:
    assert stream.status == 200, stream.raw
    await stream.wait_for(lambda s: bool(s.system("connect")))
    return str(stream.system("connect")[0]["payload"]["detail"]["connectionId"])


def payloads(stream: Stream) -> list[Any]:
    return [e["payload"] for e in stream.envelopes("json")]


async def received(stream: Stream, payload: Any) -> None:
    await stream.wait_for(lambda s: payload in payloads(s), timeout=15)


def row(server: Server, connection_id: str) -> dict[str, Any] | None:
    rows = httpx.get(f"{server.url}/api/connections", headers=ADMIN, timeout=10).json()
    return next((r for r in rows if r["connectionId"] == connection_id), None)


async def test_added_topics_are_received_and_removed_ones_are_not(nodes: list[Server]) -> None:
    holder, asked = nodes
    async with open_stream(holder.url, client_id="", topics="news.eu", headers=bearer("alice")) as stream:
        conn = await connected(stream)
        response = change(asked, conn, bearer("alice"), add=["sport.*"], remove=["news.eu"])
        assert response.status_code == 200, response.text
        assert response.json() == {"connectionId": conn, "topics": ["sport.*"]}
        await stream.wait_for(lambda s: bool(s.system("subscribed")))
        detail = stream.system("subscribed")[0]["payload"]["detail"]
        assert detail == {"topics": ["sport.*"], "added": ["sport.*"], "removed": ["news.eu"]}
        publish(asked, "news.eu", "old-topic")
        publish(asked, "sport.ski", "new-topic")
        await received(stream, "new-topic")
        publish(holder, "sport.end", "marker")  # after the old-topic publish on the same log: it would be here by now
        await received(stream, "marker")
        assert payloads(stream) == ["new-topic", "marker"]
        # The connection row shows the new set, on every node.
        await wait_until(lambda: (row(asked, conn) or {}).get("topics") == ["sport.*"], "the row on the asked node")
        assert (row(holder, conn) or {}).get("topics") == ["sport.*"]


async def test_patterns_are_checked_against_the_callers_grants(nodes: list[Server]) -> None:
    holder, asked = nodes
    async with open_stream(holder.url, client_id="", topics="news.eu", headers=bearer("alice")) as stream:
        conn = await connected(stream)
        assert error_of(change(asked, conn, bearer("alice"), add=["secret.x"])) == (403, "topic_not_granted")
        assert error_of(change(asked, conn, bearer("alice"), add=["news..x"])) == (400, "invalid_topic")
        assert error_of(change(asked, conn, {}, add=["news.x"])) == (401, "missing_token")
        # Nothing changed: the stream still has its topic and no subscribed event.
        publish(asked, "news.eu", "still")
        await received(stream, "still")
        assert stream.system("subscribed") == []
        # An admin (an API key) may change anyone's stream, within what its owner may subscribe to.
        response = change(asked, conn, ADMIN, add=["sport.x"])
        assert response.json()["topics"] == ["news.eu", "sport.x"], response.text
        publish(asked, "sport.x", "admin-added")
        await received(stream, "admin-added")


async def test_added_topics_must_be_granted_to_the_streams_owner(nodes: list[Server]) -> None:
    # Regression (review finding 1): the set a change leaves is the one the owner's SDK reconnects with, so a pattern
    # its own identity may not subscribe to would make that reconnect a fatal 403. The holder checks the grants the
    # stream was opened with, whoever asks: an admin, or the owner with a token of wider grants.
    holder, asked = nodes
    opened_with = bearer("alice", topics=["news.>"])
    async with open_stream(holder.url, client_id="", topics="news.eu", headers=opened_with) as stream:
        conn = await connected(stream)
        refused = change(asked, conn, ADMIN, add=["news.uk", "secret.x"])
        assert error_of(refused) == (403, "topic_not_granted")
        assert refused.json()["detail"] == {"topic": "secret.x"}
        assert error_of(change(asked, conn, bearer("alice"), add=["sport.x"])) == (403, "topic_not_granted")
        publish(asked, "news.eu", "unchanged")
        await received(stream, "unchanged")
        assert stream.system("subscribed") == []
        assert (row(holder, conn) or {}).get("topics") == ["news.eu"]
        # Within the owner's grants, the admin's change applies; the owner reconnects with it and is accepted.
        assert change(asked, conn, ADMIN, add=["news.uk"]).json()["topics"] == ["news.eu", "news.uk"]
    async with open_stream(asked.url, client_id="", topics="news.eu,news.uk", headers=opened_with) as again:
        await connected(again)


async def test_a_change_that_changes_nothing_sends_no_frame(nodes: list[Server]) -> None:
    # Regression (review finding 13): no subscribed event with added [] and removed [].
    holder, asked = nodes
    async with open_stream(holder.url, client_id="", topics="news.eu,sport.*", headers=bearer("alice")) as stream:
        conn = await connected(stream)
        for body in ({"add": ["news.eu"]}, {"remove": ["never.had"]}, {"add": ["news.eu"], "remove": ["news.eu"]}, {}):
            response = change(asked, conn, bearer("alice"), **body)
            assert response.json() == {"connectionId": conn, "topics": ["news.eu", "sport.*"]}, (body, response.text)
        assert change(asked, conn, bearer("alice"), add=["news.uk"]).status_code == 200  # a real change, as a marker
        await stream.wait_for(lambda s: bool(s.system("subscribed")))
        publish(asked, "news.uk", "after")
        await received(stream, "after")
        details = [e["payload"]["detail"] for e in stream.system("subscribed")]
        assert details == [{"topics": ["news.eu", "sport.*", "news.uk"], "added": ["news.uk"], "removed": []}]


async def test_concurrent_changes_asked_of_every_node_all_apply(nodes: list[Server]) -> None:
    # Regression (review finding 6): a change is computed by the node that holds the stream from the stream's own
    # patterns, not from a connection row read elsewhere (which may be stale: 409 subscription_conflict).
    holder, asked = nodes
    async with open_stream(holder.url, client_id="", topics="news.eu", headers=bearer("alice")) as stream:
        conn = await connected(stream)
        added = [f"sport.s{i}" for i in range(40)]
        async with httpx.AsyncClient(timeout=15) as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        f"{(asked, asked, asked, holder)[i % 4].url}/api/subscriptions",
                        json={"connectionId": conn, "add": [topic], "remove": ["news.eu"]},
                        headers=bearer("alice"),
                    )
                    for i, topic in enumerate(added)
                )
            )
        assert [a.status_code for a in answers] == [200] * len(added), [a.text for a in answers]
        final = max((a.json()["topics"] for a in answers), key=len)
        assert sorted(final) == sorted(added)
        await wait_until(lambda: sorted((row(asked, conn) or {}).get("topics", [])) == sorted(added), "every change")
        await stream.wait_for(lambda s: len(s.system("subscribed")) == len(added))


async def test_someone_elses_stream_is_unknown(nodes: list[Server]) -> None:
    holder, asked = nodes
    async with open_stream(holder.url, client_id="", topics="news.eu", headers=bearer("alice")) as stream:
        conn = await connected(stream)
        mallory = error_of(change(asked, conn, bearer("mallory"), remove=["news.eu"]))
        node = conn.rpartition(".")[0]
        for unknown in (f"{node}.999999", "nonode.1", "no-dot", f"{node}.x1", f"{node}.{'9' * 40}"):
            assert error_of(change(asked, unknown, bearer("alice"), add=["news.x"])) == mallory
        assert mallory == (404, "unknown_connection")
        publish(asked, "news.eu", "kept")
        await received(stream, "kept")
    # A stream that closed is unknown too (no oracle between "closed" and "never was").
    await wait_until(lambda: row(asked, conn) is None, "the closed stream's row to go")
    assert error_of(change(asked, conn, bearer("alice"), add=["news.x"])) == (404, "unknown_connection")


async def test_the_resulting_set_keeps_the_streams_bounds(nodes: list[Server]) -> None:
    holder, asked = nodes
    long = [f"news.{i:03d}-{'x' * 90}" for i in range(10)]
    async with open_stream(holder.url, client_id="", topics=",".join(long), headers=bearer("alice")) as stream:
        conn = await connected(stream)
        deep = "deep." + ".".join("s" * 16)  # 17 segments
        assert error_of(change(asked, conn, bearer("alice"), add=[deep])) == (400, "topic_too_deep")
        # 10 x 99 characters are within 1024; 110 more are not, whatever is added in the same change.
        too_long = error_of(change(asked, conn, bearer("alice"), add=[f"news.more-{'y' * 100}"]))
        assert too_long == (400, "topics_too_long")
        swapped = change(asked, conn, bearer("alice"), add=[f"news.more-{'y' * 100}"], remove=[long[0]])
        assert swapped.status_code == 200, swapped.text
        many = [f"sport.s{i}" for i in range(55)]
        assert error_of(change(asked, conn, bearer("alice"), add=many)) == (400, "too_many_topics")  # 10 + 55 > 64
        assert error_of(change(asked, conn, bearer("alice"), add=[f"sport.s{i}" for i in range(65)]))[0] == 422
        publish(asked, long[1], "refusals changed nothing")
        await received(stream, "refusals changed nothing")
        assert len(stream.system("subscribed")) == 1


async def test_a_resume_after_a_change_replays_by_the_new_topics(nodes: list[Server]) -> None:
    holder, asked = nodes
    async with open_stream(holder.url, client_id="", topics="news.eu", headers=bearer("alice")) as stream:
        conn = await connected(stream)
        assert change(asked, conn, bearer("alice"), add=["sport.*"], remove=["news.eu"]).status_code == 200
        publish(asked, "sport.a", "seen")
        await received(stream, "seen")
        cursor = stream.last_id
    assert cursor
    publish(asked, "news.eu", "removed-while-away")
    publish(asked, "sport.b", "missed-while-away")
    headers = {**bearer("alice"), "Last-Event-ID": cursor}
    async with open_stream(asked.url, client_id="", topics="sport.*", headers=headers) as resumed:
        await connected(resumed)
        await received(resumed, "missed-while-away")
        assert resumed.system("connect")[0]["payload"]["detail"]["resumed"] is True
        assert payloads(resumed) == ["missed-while-away"]


async def test_the_python_client_changes_its_topics_and_reconnects_with_them(nodes: list[Server]) -> None:
    holder, asked = nodes
    async with Client(holder.url, client_id="alice", token=token("alice"), topics=["news.eu"]) as client:
        inbox = client.messages()
        assert await client.subscribe_topics("sport.*", "news.eu") == ("news.eu", "sport.*")
        assert await client.unsubscribe_topics("news.eu", "never.had") == ("sport.*",)
        assert client.topics == ("sport.*",)
        conn = client.connection_info["connectionId"]
        assert (row(asked, conn) or {}).get("topics") in (["sport.*"], None)  # None: the other node's row is late
        publish(asked, "news.eu", "removed")
        publish(asked, "sport.x", "added")
        message = await asyncio.wait_for(inbox.__anext__(), 15)
        assert message.payload == "added"
        with pytest.raises(AuthError) as refused:
            await client.subscribe_topics("secret.x")
        assert refused.value.status == 403
        assert client.topics == ("sport.*",)
        # An admin changes the stream: the client learns it from the subscribed event and reconnects with it.
        close = httpx.post(
            f"{asked.url}/api/subscriptions", json={"connectionId": conn, "remove": ["sport.*"]}, headers=ADMIN
        )
        assert close.status_code == 200, close.text
        await wait_until(lambda: client.topics == (), "the client to learn the admin's change")
        assert await client.subscribe_topics("news.uk") == ("news.uk",)
        publish(asked, "sport.z", "not any more")
        publish(asked, "news.uk", "uk")
        assert (await asyncio.wait_for(inbox.__anext__(), 15)).payload == "uk"


async def test_the_python_client_resumes_with_its_new_topics(nodes: list[Server]) -> None:
    holder, asked = nodes
    options: dict[str, Any] = {"token": token("dave"), "topics": ["news.eu"], "reconnect_base_delay": 0.05}
    async with Client(holder.url, client_id="dave", **options) as client:
        inbox = client.messages()
        await client.subscribe_topics("sport.*")
        await client.unsubscribe_topics("news.eu")
        publish(asked, "sport.a", "before")
        assert (await asyncio.wait_for(inbox.__anext__(), 15)).payload == "before"
        first = client.connection_info["connectionId"]
        # Another stream of dave's replaces the client's (the limit is 1); what is published meanwhile waits in
        # the log, and the client resumes with the set it holds now.
        async with open_stream(asked.url, client_id="", headers=bearer("dave")) as intruder:
            await connected(intruder)
            publish(asked, "news.eu", "removed-while-away")
            publish(asked, "sport.b", "missed-while-away")
            await wait_until(lambda: client.connection_info.get("connectionId") != first, "the client to reconnect")
        assert (await asyncio.wait_for(inbox.__anext__(), 15)).payload == "missed-while-away"
        assert client.connection_info["resumed"] is True
        publish(asked, "news.eu", "removed-after")
        publish(asked, "sport.c", "after")
        assert (await asyncio.wait_for(inbox.__anext__(), 15)).payload == "after"
        conn = client.connection_info["connectionId"]
        await wait_until(lambda: (row(asked, conn) or {}).get("topics") == ["sport.*"], "the new stream's row")


def test_the_sync_client_has_the_same_methods(nodes: list[Server]) -> None:
    holder, _ = nodes
    with SyncClient(holder.url, client_id="bob", token=token("bob"), topics=["news.eu"]) as client:
        assert client.subscribe_topics("sport.*") == ("news.eu", "sport.*")
        assert client.unsubscribe_topics("news.eu") == ("sport.*",)
        assert tuple(client.topics) == ("sport.*",)


async def test_a_change_without_a_stream_is_kept_for_the_next_connect(nodes: list[Server]) -> None:
    holder, asked = nodes
    client = Client(holder.url, client_id="carol", token=token("carol"), topics=["news.eu"], auto_connect=False)
    async with client:
        assert await client.subscribe_topics("sport.*") == ("news.eu", "sport.*")
        await client.connect()
        conn = client.connection_info["connectionId"]
        await wait_until(lambda: (row(asked, conn) or {}).get("topics") == ["news.eu", "sport.*"], "carol's row")
