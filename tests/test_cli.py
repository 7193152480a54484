"""The ``sse-fast`` command line: ``listen`` and ``publish`` (``serve`` is exercised by every e2e test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from _servers import BIN, running_server
from sse_fast.cli import _render, main
from sse_fast.models import Envelope

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("listen", ["--client-id", "--topics", "--token", "--json"]),
        ("publish", ["--target", "--topic", "--broadcast", "--type", "--priority", "--token", "--api-key"]),
        ("serve", ["--host", "--port", "--workers", "--broker"]),
    ],
)
def test_each_command_has_help(command: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sse-fast {command}" in out
    for option in expected:
        assert option in out


def test_publish_routes_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["publish", "http://127.0.0.1:1", "x", "--target", "a", "--topic", "b"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_human_output_names_type_source_route_and_payload() -> None:
    text = Envelope(type="text", payload="hello", source="bob", target="alice")
    data = Envelope(type="json", payload={"n": 1}, source="server", topic="orders.eu")
    assert _render(text, False) == "[text] bob -> alice: hello"
    assert _render(data, False) == '[json] server #orders.eu: {"n":1}'
    assert json.loads(_render(data, True)) == {"type": "json", "source": "server", "topic": "orders.eu",
                                               "payload": {"n": 1}}  # fmt: skip


async def run(*args: str) -> tuple[int, str, str]:
    """Run ``sse-fast`` to completion; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sse-fast"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Listener:
    """A running ``sse-fast listen`` whose stdout lines are read with deadlines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert raw, "listen exited"
        return raw.decode().rstrip("\n")

    async def json_line(self) -> Any:
        return json.loads(await self.line())


@contextlib.asynccontextmanager
async def listening(*args: str) -> AsyncIterator[Listener]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sse-fast"), "listen", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield Listener(proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.e2e
async def test_listen_json_prints_what_publish_sends(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        async with listening(server.url, "--client-id", "alice", "--topics", "orders.*", "--json") as listener:
            connect = await listener.json_line()
            assert connect["type"] == "system"
            assert connect["payload"]["event"] == "connect"
            code, out, err = await run("publish", server.url, '{"n": 1}', "--target", "alice", "--client-id", "bob")
            assert code == 0, err
            answer = json.loads(out)
            assert answer["delivered"] == 1
            message = await listener.json_line()
            assert message["id"] == answer["messageId"]
            assert (message["type"], message["payload"], message["source"]) == ("json", {"n": 1}, "bob")
            code, out, err = await run(
                "publish", server.url, "big news", "--topic", "orders.eu", "--type", "news", "--priority", "3"
            )
            assert code == 0, err
            message = await listener.json_line()
            assert (message["type"], message["payload"], message["priority"]) == ("news", "big news", 3)
            assert message["topic"] == "orders.eu"
            code, out, err = await run("publish", server.url, "to all", "--broadcast")
            assert code == 0, err
            assert (await listener.json_line())["payload"] == "to all"
        assert listener.proc.returncode == 0


@pytest.mark.e2e
async def test_listen_prints_readable_lines_and_reconnects(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_RETRY": "100", "SSE_FAST_RETRY_SPREAD": "0"}) as server:
        async with listening(server.url, "--client-id", "bob") as listener:
            assert (await listener.line()).startswith('[system] server: {"event":"connect"')
            code, _, err = await run("publish", server.url, "hello", "--target", "bob", "--client-id", "alice")
            assert code == 0, err
            assert await listener.line() == "[text] alice -> bob: hello"


@pytest.mark.e2e
async def test_publish_reports_a_refused_message(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        code, out, err = await run("publish", server.url, "x", "--target", "not a client id!")
        assert code == 1
        assert out == ""
        assert "400 invalid_client_id" in err


@pytest.mark.e2e
async def test_listen_with_a_bad_token_exits_1(tmp_path: Path) -> None:
    env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": "s" * 32}
    with running_server(tmp_path, env=env) as server:
        code, _, err = await run("listen", server.url, "--client-id", "alice", "--token", "nope")
        assert code == 1
        assert "refused (401" in err


def test_serve_sizes_granian_for_streams_per_worker_process() -> None:
    from sse_fast.cli import serve_options

    one = serve_options(20_000, 1)
    two = serve_options(20_000, 2)
    # The open-file limit is per process: each worker holds as many streams, and the default 1,024 is far exceeded.
    assert one["backpressure"] == two["backpressure"] > 19_000
    assert two["backlog"] >= 2 * 19_000 or two["backlog"] == 65_535
    assert serve_options(512, 1)["backpressure"] == 1024
