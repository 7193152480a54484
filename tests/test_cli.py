"""The ``sse-fast`` command line: ``listen`` and ``publish`` (``serve`` is exercised by every e2e test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _redis import RedisServer
from _servers import BIN, Server, free_port, open_stream, running_server
from sse_fast.broker.redis import RedisBroker
from sse_fast.broker.redis.connection import ClusterRefused
from sse_fast.cli import RUNTIME_THREADS_MAX, ExitCode, _render, main, runtime_options
from sse_fast.models import Envelope
from sse_fast.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("listen", ["--client-id", "--topics", "--token", "--json"]),
        ("publish", ["--target", "--topic", "--broadcast", "--type", "--priority", "--token", "--api-key"]),
        ("serve", ["--host", "--port", "--workers", "--runtime-threads", "--runtime-mode", "--broker"]),
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


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``sse-fast`` to completion; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sse-fast"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
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
    # PYTHONFAULTHANDLER: a listener that does not stop on SIGINT is sent SIGABRT, and its Python stacks (on stderr)
    # go into the failure.
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sse-fast"),
        "listen",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        # A shell without job control starts background jobs with SIGINT ignored, and the child inherits that:
        # give it back the default, as a terminal's Ctrl-C would find it (CI started with `.ci/run &` hit this).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield Listener(proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.send_signal(signal.SIGABRT)
                _, err = await asyncio.wait_for(proc.communicate(), 10)
                raise AssertionError(f"listen ignored SIGINT for 10 s; its stacks:\n{err.decode()[-6000:]}") from None


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
async def test_publish_refused_by_the_server_exits_refused_with_words_not_regexes(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        code, out, err = await run("publish", server.url, "x", "--type", "not a type!")
        assert code == ExitCode.REFUSED == 5
        assert out == ""
        assert "422 invalid_message" in err
        assert "1 to 64 letters, digits or any of _ . : -" in err
        assert "[A-Za-z" not in err
        assert "Traceback" not in err


def test_a_bad_client_id_is_a_usage_error_said_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["publish", "http://127.0.0.1:1", "x", "--target", "not a client id!"],
        ["listen", "http://127.0.0.1:1", "--client-id", "a/b"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == ExitCode.USAGE == 2
        err = capsys.readouterr().err
        assert "is not a clientId: a clientId is 1 to 128 letters, digits or any of _ . : @ -" in err
        assert "[A-Za-z" not in err


def test_a_bad_topic_pattern_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["listen", "http://127.0.0.1:1", "--client-id", "a", "--topics", "news.*,a..b"])
    assert exited.value.code == ExitCode.USAGE
    assert "empty segment" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_bad_log_level_is_a_usage_error_before_or_after_the_command(
    where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["publish", "http://127.0.0.1:1", "x"]
    argv = ["--log-level", "loud", *argv] if where == "before" else [*argv, "--log-level", "loud"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "'loud' is not a log level (one of: critical, error, warning, info, debug)" in err
    assert "Traceback" not in err


async def test_a_bad_log_level_in_the_environment_is_a_usage_error() -> None:
    code, _, err = await run("publish", "http://127.0.0.1:1", "x", env={"SSE_FAST_LOG_LEVEL": "loud"})
    assert code == ExitCode.USAGE
    assert "SSE_FAST_LOG_LEVEL: 'loud' is not a log level" in err
    assert "Traceback" not in err


def test_every_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["publish", "--help"], ["listen", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit codes:" in out
        for code in ExitCode:
            assert f"\n  {int(code)}  " in out
        assert "--log-level" in out


def test_the_readme_documents_every_exit_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### From the shell:", 1)[1].split("\n### ", 1)[0]
    documented = {int(line.split("|")[1]) for line in table.splitlines() if line.startswith("| ") and "|---" not in line
                  and line.split("|")[1].strip().isdigit()}  # fmt: skip
    assert documented == {int(code) for code in ExitCode}


async def test_publish_to_a_closed_port_fails_fast_with_the_network_code() -> None:
    port = free_port()
    started = time.monotonic()
    # --log-level after the command is accepted (and a valid level in any case).
    code, out, err = await run("publish", f"http://127.0.0.1:{port}", "x", "--log-level", "WARNING")
    assert code == ExitCode.NETWORK == 3
    assert time.monotonic() - started < 5  # no retries (they took 48 s)
    assert out == ""
    assert f"cannot reach http://127.0.0.1:{port}" in err
    assert "Traceback" not in err


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A socket that accepts connections (the kernel does, from its backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_publish_gives_up_after_its_timeout() -> None:
    with silent_listener() as url:
        started = time.monotonic()
        code, _, err = await run("publish", url, "x", "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert code == ExitCode.NETWORK
    assert 0.5 <= elapsed < 5
    assert f"no answer from {url} within 0.5 s" in err


def test_publish_timeout_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SystemExit) as exited:
            main(["publish", "http://127.0.0.1:1", "x", "--timeout", bad])
        assert exited.value.code == ExitCode.USAGE
        assert "is not a number of seconds above 0" in capsys.readouterr().err


@pytest.mark.e2e
async def test_bad_credentials_exit_with_the_auth_code(tmp_path: Path) -> None:
    env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": "s" * 32}
    with running_server(tmp_path, env=env) as server:
        code, _, err = await run("listen", server.url, "--client-id", "alice", "--token", "nope")
        assert code == ExitCode.AUTH == 4
        assert "refused (401" in err
        code, out, err = await run("publish", server.url, "x", "--token", "nope")
        assert code == ExitCode.AUTH
        assert out == ""
        assert "sse-fast: 401 " in err


@pytest.mark.e2e
async def test_no_httpx_line_per_request(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        code, _, err = await run("--log-level", "info", "publish", server.url, "x")
        assert code == ExitCode.OK, err
        assert "HTTP Request" not in err
        async with listening(server.url, "--client-id", "carol", "--log-level", "info") as listener:
            assert (await listener.line()).startswith("[system] server:")
        assert listener.proc.stderr is not None
        listen_err = (await listener.proc.stderr.read()).decode()
        assert "connecting -> connected" in listen_err
        assert "HTTP Request" not in listen_err


async def delivery_status(server_url: str, message_id: str, source: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server_url}/api/messages/{message_id}", headers={"X-Client-Id": source})
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.e2e
async def test_listen_acks_only_with_ack(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_ACK_TIMEOUT": "60"}) as server:
        async with httpx.AsyncClient() as http:

            async def publish(target: str) -> str:
                body = {"type": "text", "payload": "please ack", "target": target, "requireAck": True}
                response = await http.post(f"{server.url}/api/messages", json=body, headers={"X-Client-Id": "shop"})
                assert response.status_code == 202, response.text
                return str(response.json()["messageId"])

            # Without --ack: the listener shows the message (from the mailbox) and leaves it pending.
            first = await publish("alice")
            async with listening(server.url, "--client-id", "alice", "--json") as listener:
                assert (await listener.json_line())["type"] == "system"
                assert (await listener.json_line())["id"] == first
                second = await publish("alice")  # and a live one
                assert (await listener.json_line())["id"] == second
                # A client acks as soon as its handlers ran: give it the time it would take, and see nothing come.
                quiet_until = time.monotonic() + 1.5
                while time.monotonic() < quiet_until:
                    assert (await delivery_status(server.url, first, "shop"))["ackedBy"] == []
                    assert (await delivery_status(server.url, second, "shop"))["ackedBy"] == []
                    await asyncio.sleep(0.1)
            # With --ack: acked, as the client's own program would.
            third = await publish("bob")
            async with listening(server.url, "--client-id", "bob", "--json", "--ack") as listener:
                assert (await listener.json_line())["type"] == "system"
                assert (await listener.json_line())["id"] == third
                deadline = time.monotonic() + 10
                while (status := await delivery_status(server.url, third, "shop"))["ackedBy"] != ["bob"]:
                    assert time.monotonic() < deadline, status
                    await asyncio.sleep(0.05)


def test_serve_sizes_granian_for_streams_per_worker_process() -> None:
    from sse_fast.cli import serve_options

    one = serve_options(20_000, 1)
    two = serve_options(20_000, 2)
    # The open-file limit is per process: each worker holds as many streams, and the default 1,024 is far exceeded.
    assert one["backpressure"] == two["backpressure"] > 19_000
    assert two["backlog"] >= 2 * 19_000 or two["backlog"] == 65_535
    assert serve_options(512, 1)["backpressure"] == 1024


@pytest.mark.parametrize(
    ("cpus", "workers", "threads", "mode"),
    [
        (1, 1, 1, "st"),  # one core: granian's writes share it with Python, one runtime
        (2, 1, 2, "mt"),  # a second core takes the socket writes
        (16, 1, RUNTIME_THREADS_MAX, "mt"),
        (16, 8, 2, "mt"),
        (16, 16, 1, "st"),
        (2, 2, 1, "st"),
        (3, 2, 1, "st"),
    ],
)
def test_runtime_threads_default_to_the_cores_per_worker_up_to_the_max(
    cpus: int, workers: int, threads: int, mode: str
) -> None:
    assert runtime_options(cpus, workers) == {"runtime_threads": threads, "runtime_mode": mode}


def test_given_runtime_threads_and_mode_win() -> None:
    assert runtime_options(1, 1, threads=4) == {"runtime_threads": 4, "runtime_mode": "mt"}
    assert runtime_options(16, 1, mode="st") == {"runtime_threads": 2, "runtime_mode": "st"}
    assert runtime_options(16, 1, threads=1, mode="mt") == {"runtime_threads": 1, "runtime_mode": "mt"}


def test_one_runtime_thread_keeps_granians_mode_for_asgi_and_http2() -> None:
    # granian's own auto: st only for RSGI that may speak HTTP/1; ASGI and HTTP/2-only get mt.
    assert runtime_options(1, 1, interface="asgi")["runtime_mode"] == "mt"
    assert runtime_options(1, 1, http="2")["runtime_mode"] == "mt"
    assert runtime_options(1, 1, http="1")["runtime_mode"] == "st"


def worker_threads(server: Server) -> list[str]:
    """The thread names of the server's granian worker process (its only child)."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    tasks = Path(f"/proc/{children[0]}/task")
    return [(task / "comm").read_text().strip() for task in tasks.iterdir()]


async def delivered_once(server: Server) -> None:
    async with open_stream(server.url, client_id="rt") as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        code, _, err = await run("publish", server.url, "hi", "--target", "rt", "--client-id", "bob")
        assert code == 0, err
        assert (await stream.count("text", 1))[0]["payload"] == "hi"


@pytest.mark.e2e
async def test_serve_runs_granian_with_the_runtime_threads_asked_for(tmp_path: Path) -> None:
    """Issue 17, item 4: with --runtime-mode mt the worker holds one tokio thread per runtime thread; with st, one
    single-threaded runtime per thread (granian names them in its log)."""
    for threads in (2, 3):
        args = ("--runtime-threads", str(threads), "--runtime-mode", "mt")
        with running_server(tmp_path, extra_args=args) as server:
            await delivered_once(server)
            assert worker_threads(server).count("tokio-rt-worker") == threads
            assert f"{threads} runtime thread(s) (mt)" in server.log()
    with running_server(tmp_path, env={"SSE_FAST_RUNTIME_THREADS": "2", "SSE_FAST_RUNTIME_MODE": "st"}) as server:
        await delivered_once(server)
        assert "tokio-rt-worker" not in worker_threads(server)
        assert "Started worker-1 runtime-2" in server.log()
        assert "Started worker-1 runtime-3" not in server.log()


@pytest.mark.e2e
async def test_serve_chooses_the_runtime_threads_for_the_cores_it_may_use(tmp_path: Path) -> None:
    chosen = runtime_options(len(os.sched_getaffinity(0)), 1)
    with running_server(tmp_path) as server:
        await delivered_once(server)
        threads = worker_threads(server).count("tokio-rt-worker")
        assert threads == (chosen["runtime_threads"] if chosen["runtime_mode"] == "mt" else 0)
        assert f"{chosen['runtime_threads']} runtime thread(s) ({chosen['runtime_mode']})" in server.log()


async def test_a_bad_runtime_setting_is_a_usage_error() -> None:
    code, _, err = await run("serve", "--port", str(free_port()), "--runtime-threads", "-1", "--runtime-mode", "mt")
    assert code == ExitCode.USAGE, err
    assert "SSE_FAST_RUNTIME_THREADS='-1': expected a whole number >= 0" in err
    code, _, err = await run("serve", "--port", str(free_port()), "--runtime-mode", "fast")
    assert code == ExitCode.USAGE
    assert "invalid choice: 'fast'" in err


async def test_serve_refuses_a_redis_cluster_node_with_the_broker_code(tmp_path: Path) -> None:
    """Issue 18, item 3: one global log cannot be sharded; a Redis Cluster is refused at start, with words."""
    server = RedisServer(tmp_path, cluster=True)
    try:
        server.start()
        with server.client() as client:
            assert client.info("cluster")["cluster_enabled"] == 1
        port = free_port()
        code, _, err = await run("serve", "--port", str(port), "--broker", server.url)
        assert code == ExitCode.BROKER == 6, err
        assert "is a Redis Cluster node (cluster_enabled:1)" in err
        assert "Traceback" not in err
        # A worker started without the CLI (plain granian) refuses in its bootstrap, with the same words.
        with pytest.raises(ClusterRefused, match=r"is a Redis Cluster node \(cluster_enabled:1\)"):
            RedisBroker(Settings(broker=server.url))
    finally:
        server.kill()
