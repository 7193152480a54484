"""sse-fast mounted inside a FastAPI application (sse_fast.mount): served by a real granian process, the host's
own login deciding who a client is through the auth hook, and the host publishing in-process."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import sse_fast
from _servers import ROOT, Server, Stream, open_stream, running_server
from sse_fast import AuthRequest, Identity, Settings, SseFast, TopicError
from sse_fast.server.auth import Authenticator
from sse_fast.server.http import Request

pytestmark = pytest.mark.e2e

APP = Path(__file__).with_name("_fastapi_app.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("mount"), command="granian", interface="asgi", app="_fastapi_app:app"
    ) as srv:
        yield srv


def login(server: Server, user: str) -> dict[str, str]:
    """Log in through the host's own route; the Cookie header its session cookie makes."""
    response = httpx.post(f"{server.url}/login/{user}")
    assert response.status_code == 200
    return {"cookie": f"session={response.cookies['session']}"}


def error_of(response: httpx.Response | Stream, status: int) -> str:
    """The ``code`` of an error answer, which must be JSON ``{"error", "code"...}`` with ``status``."""
    if isinstance(response, Stream):
        got, body = response.status, msgspec.json.decode(bytes(response.raw))
    else:
        got, body = response.status_code, response.json()
    assert got == status, body
    assert isinstance(body["error"], str)
    return str(body["code"])


# -- through the host application ------------------------------------------------------------------------------


async def test_a_client_receives_what_the_host_publishes_in_process(server: Server) -> None:
    cookie = login(server, "alice")
    async with open_stream(f"{server.url}/events", client_id="", topics="orders.alice", headers=cookie) as stream:
        assert stream.status == 200
        connect = (await stream.count("system", 1))[0]
        assert connect["payload"]["detail"]["clientId"] == "alice"  # from the hook, never from the request
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{server.url}/orders", params={"item": "tea"}, headers=cookie)
        assert answer.status_code == 200
        placed = answer.json()
        assert placed["delivered"] == 1
        [message] = await stream.count("json", 1)
        assert message["topic"] == "orders.alice"
        assert message["payload"] == placed["order"]
        assert message["id"] == placed["messageId"]
        assert message["source"] == "server"


async def test_a_client_unknown_to_the_host_gets_401_json(server: Server) -> None:
    async with open_stream(f"{server.url}/events", client_id="alice", topics="orders.alice") as stream:
        assert error_of(stream, 401) == "unauthenticated"
    forged = {"cookie": "session=not-a-session"}
    async with open_stream(f"{server.url}/events", client_id="", topics="orders.alice", headers=forged) as stream:
        assert error_of(stream, 401) == "unauthenticated"
    # The HTTP API under the mount asks the same hook.
    response = httpx.post(f"{server.url}/events/api/messages", json={"type": "text", "topic": "a", "payload": "x"})
    assert error_of(response, 401) == "unauthenticated"


async def test_a_client_cannot_read_a_topic_its_grants_do_not_cover(server: Server) -> None:
    cookie = login(server, "bob")
    for topics in ("orders.alice", "orders.*", "orders.>", "orders.bob,orders.alice"):
        async with open_stream(f"{server.url}/events", client_id="", topics=topics, headers=cookie) as stream:
            assert error_of(stream, 403) == "topic_not_granted", topics


async def test_a_client_cannot_claim_another_client_id(server: Server) -> None:
    cookie = login(server, "bob")
    async with open_stream(f"{server.url}/events", client_id="alice", topics="orders.bob", headers=cookie) as stream:
        assert error_of(stream, 403) == "client_id_mismatch"
    response = httpx.post(
        f"{server.url}/events/api/direct/alice",
        json={"type": "text", "payload": "x"},
        headers={**cookie, "x-client-id": "alice"},
    )
    assert error_of(response, 403) == "client_id_mismatch"


async def test_the_hook_is_the_only_source_an_api_key_or_a_token_adds_nothing(server: Server) -> None:
    body = {"type": "text", "topic": "orders.alice", "payload": "forged"}
    for headers in ({"x-api-key": "anything"}, {"authorization": "Bearer x.y.z"}):
        response = httpx.post(f"{server.url}/events/api/messages", json=body, headers=headers)
        assert error_of(response, 401) == "unauthenticated"
    # Logged in, bob has no publish grant: the hook's grants are the ones applied.
    response = httpx.post(f"{server.url}/events/api/messages", json=body, headers=login(server, "bob"))
    assert error_of(response, 403) == "topic_not_granted"


def test_the_sdk_and_the_open_routes_are_served_under_the_prefix(server: Server) -> None:
    response = httpx.get(f"{server.url}/events/sdk/sse-fast.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == (ROOT / "python" / "sse_fast" / "static" / "sse-fast.js").read_bytes()
    assert httpx.get(f"{server.url}/events/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/events/readyz").status_code == 200
    assert error_of(httpx.get(f"{server.url}/events/no/such/route"), 404) == "not_found"
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}  # the host's own route, not sse-fast's


def test_the_readme_shows_the_code_this_test_runs() -> None:
    code = APP.read_text().split('"""\n', 1)[1].strip()
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Inside FastAPI / Starlette") :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    assert block.group(1).strip() == code


# -- in-process: the publish API and the hook -----------------------------------------------------------------


async def test_a_host_publish_is_validated_like_the_http_api() -> None:
    sse = SseFast(Settings())
    with pytest.raises(TopicError):
        await sse.publish_json("orders..alice", {})
    with pytest.raises(TopicError):
        await sse.publish_json("orders.*", {})  # a pattern is for subscribing, not publishing
    with pytest.raises(ValueError, match="clientId"):
        await sse.send_to("not a client id", {})
    with pytest.raises(ValueError, match="excludeClientId"):
        await sse.broadcast({}, exclude_client_id="not a client id")
    with pytest.raises(ValueError, match="priority"):
        await sse.publish_json("orders.alice", {}, priority=9)
    with pytest.raises(ValueError, match="requireAck"):
        await sse.publish_json("orders.alice", {}, require_ack=True, ephemeral=True)


async def test_host_publishes_answer_like_the_python_client() -> None:
    sse = SseFast(Settings())
    async with sse.lifespan():
        sent = await sse.publish_json("orders.alice", {"id": 1}, id="order-1")
        assert isinstance(sent, sse_fast.PublishAnswer)
        assert (sent.message_id, sent.delivered, sent.duplicate) == ("order-1", 0, False)
        again = await sse.publish_json("orders.alice", {"id": 1}, id="order-1")
        assert (again.message_id, again.delivered, again.duplicate) == ("order-1", 0, True)
        direct = await sse.send_to("alice", "hello", type="text")
        assert direct.queued  # alice is offline: her mailbox holds it
        everyone = await sse.broadcast({"notice": "maintenance at 22:00"})
        assert (everyone.delivered, everyone.duplicate) == (0, False)


async def test_without_the_lifespan_the_first_publish_starts_the_worker() -> None:
    sse = SseFast(Settings())
    try:
        answer = await sse.send_to("bob", {"n": 1})
        assert answer.queued
        assert sse.app._started  # the ticker, the broker (a Redis connection) and the scheduler run now
    finally:
        await sse.app.shutdown()


def request(cookie: str = "", query: str = "") -> Request:
    async def nothing() -> Any:
        yield b""

    query_dict = dict(p.split("=", 1) for p in query.split("&") if p)
    return Request("GET", "/sse", query_dict, {"cookie": cookie}, "127.0.0.1:1", nothing, root_path="/events")


async def test_a_sync_hook_sees_the_request_and_its_answer_is_checked() -> None:
    seen: list[AuthRequest] = []

    def hook(req: AuthRequest) -> Identity | None:
        seen.append(req)
        user = req.cookies.get("user")
        return Identity(client_id=user, topics=("a.>",)) if user else None

    auth = Authenticator(Settings(), hook=hook)
    req = request('user=alice; theme="dark"', "clientId=alice")
    await auth.resolve(req)
    assert auth.stream_caller(req).client_id == "alice"
    assert (seen[0].path, seen[0].root_path, dict(seen[0].cookies)) == (
        "/sse",
        "/events",
        {"user": "alice", "theme": "dark"},
    )
    nobody = request()
    await auth.resolve(nobody)
    with pytest.raises(sse_fast.SseFastError, match="did not recognise"):
        auth.caller(nobody)
    with pytest.raises(ValueError, match="not a valid, unreserved clientId"):
        await auth.resolve(request("user=server"))  # a reserved name is the host's bug: 500, never trusted

    def bad_grant(req: AuthRequest) -> Identity:
        return Identity(client_id="alice", topics=("a..b",))

    with pytest.raises(ValueError, match="topic pattern"):
        await Authenticator(Settings(), hook=bad_grant).resolve(request())


async def test_a_stream_ticket_carries_the_hooks_identity(server: Server) -> None:
    cookie = login(server, "carol")
    issued = httpx.post(f"{server.url}/events/api/tickets", headers=cookie)
    assert issued.status_code == 200
    query = f"ticket={issued.json()['ticket']}"
    async with open_stream(f"{server.url}/events", client_id="", topics="orders.carol", query=query) as stream:
        assert stream.status == 200
        connect = (await stream.count("system", 1))[0]
        assert connect["payload"]["detail"]["clientId"] == "carol"
    async with open_stream(f"{server.url}/events", client_id="", topics="orders.carol", query=query) as stream:
        assert error_of(stream, 401) == "invalid_ticket"  # used up


async def test_sigterm_sends_maintenance_and_the_host_exits_cleanly(tmp_path: Path) -> None:
    with running_server(tmp_path, command="granian", interface="asgi", app="_fastapi_app:app") as server:
        cookie = login(server, "dave")
        async with open_stream(f"{server.url}/events", client_id="", topics="orders.dave", headers=cookie) as stream:
            await stream.count("system", 1)
            assert server.stop(signal.SIGTERM) == 0
            await stream.wait_for(lambda s: bool(s.system("maintenance")))
            assert stream.system("maintenance")[0]["payload"]["detail"]
        assert "Traceback" not in server.log()


# -- a hook that rules on the path (tests/_hooked_app.py) --------------------------------------------------------


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("hooked"), command="granian", interface="asgi", app="_hooked_app:app"
    ) as srv:
        yield srv


def seen(server: Server) -> list[dict[str, str]]:
    """What the hook of _hooked_app saw so far (path and route), oldest first."""
    answer = httpx.get(f"{server.url}/seen")
    assert answer.status_code == 200
    return list(answer.json())


def test_the_hook_sees_the_path_the_router_answers_so_a_path_rule_holds(hooked: Server) -> None:
    before = len(seen(hooked))
    for path in ("/api/admin/recent", "//api/admin/recent/", "/api/admin/recent//", "///api/admin/recent"):
        assert error_of(httpx.get(f"{hooked.url}/events{path}"), 401) == "unauthenticated", path
    assert httpx.get(f"{hooked.url}/events//api/presence/", params={"topic": "a"}).status_code == 200
    assert seen(hooked)[before:] == [
        *[{"path": "/api/admin/recent", "route": "/api/admin/recent"}] * 4,
        {"path": "/api/presence", "route": "/api/presence"},
    ]


def test_the_hook_is_not_asked_for_the_open_routes(hooked: Server) -> None:
    before = len(seen(hooked))
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/sdk/sse-fast.js", "/admin"):
        assert httpx.get(f"{hooked.url}/events{path}").status_code == 200, path
    assert seen(hooked)[before:] == []  # as the README says: these answer whoever asks
