"""TLS and HTTP/2 (issue 15, section 3): real granian with a self-signed certificate, real httpx speaking HTTP/2.

Under HTTP/2 many streams share one socket: a stream that stops reading must be cut alone (``slow_consumer``), its
neighbours on the same connection must get everything, and the connection itself must stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from _servers import BIN, ROOT, Server, free_port
from sse_fast import Decoder

pytestmark = pytest.mark.e2e

API_KEY = "tls-publisher-key-0123456789"
PAYLOAD = "x" * 60_000


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its PKCS#8 key: (certfile, keyfile)."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


def trusting(certfile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certfile))


def start_tls_server(
    tmp_path: Path, cert: tuple[Path, Path], *, command: str = "serve", args: tuple[str, ...] = (), **env: str
) -> Server:
    """``sse-fast serve --ssl-certfile/--ssl-keyfile`` (or plain ``granian --ssl-certificate``) on a free port."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_FAST_")}
    full_env.update({"SSE_FAST_KEEPALIVE": "15", "PYTHONUNBUFFERED": "1", "SSE_FAST_API_KEYS": API_KEY, **env})
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    certfile, keyfile = (str(p) for p in cert)
    if command == "serve":
        argv = [
            str(BIN / "sse-fast"),
            "serve",
            "--port",
            str(port),
            "--ssl-certfile",
            certfile,
            "--ssl-keyfile",
            keyfile,
        ]
    else:
        argv = [str(BIN / "granian"), "--port", str(port), "--loop", "uvloop", "--ssl-certificate", certfile]
        argv += ["--ssl-keyfile", keyfile, "sse_fast.app:app"]
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, *args], env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    server = Server(f"https://127.0.0.1:{port}", port, proc, log_path)
    deadline = time.monotonic() + 30
    context = trusting(cert[0])
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/healthz", timeout=1, verify=context).status_code == 200:
                return server
        time.sleep(0.05)  # ok-sleep: polling a starting process
    server.kill()
    raise AssertionError(f"server did not become healthy:\n{server.log()}")


@contextlib.contextmanager
def tls_server(tmp_path: Path, cert: tuple[Path, Path], **kwargs: Any) -> Iterator[Server]:
    server = start_tls_server(tmp_path, cert, **kwargs)
    try:
        yield server
    finally:
        server.kill()


class H2Stream:
    """One ``GET /sse`` on a shared HTTP/2 client, read in the background (or not at all: ``read=False``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.decoder = Decoder()
        self.events: list[Any] = []
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()

    async def pump(self) -> None:
        try:
            async for chunk in self.response.aiter_raw():
                self.events.extend(self.decoder.feed(chunk))
                self.changed.set()
        except httpx.HTTPError:
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def of_type(self, event: str) -> list[Any]:
        return [e for e in self.events if e.event == event]

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"condition not met in {timeout}s; got {len(self.events)} events"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))


@contextlib.asynccontextmanager
async def h2_stream(http: httpx.AsyncClient, url: str, client_id: str, *, read: bool = True) -> AsyncIterator[H2Stream]:
    async with http.stream("GET", f"{url}/sse?clientId={client_id}") as response:
        assert response.status_code == 200
        assert response.http_version == "HTTP/2"
        stream = H2Stream(response)
        task = asyncio.create_task(stream.pump()) if read else None
        try:
            yield stream
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def h2_client(cert: tuple[Path, Path]) -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, http1=False, verify=trusting(cert[0]), timeout=httpx.Timeout(10.0, read=None))


def local_port(response: httpx.Response) -> int:
    """The client's port of the TCP connection that carried ``response``: equal ports, one connection."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


async def connected(http: httpx.AsyncClient, url: str) -> list[str]:
    response = await http.get(f"{url}/api/connections")
    assert response.status_code == 200
    return sorted(row["clientId"] for row in response.json())


async def wait_connected(http: httpx.AsyncClient, url: str, expected: list[str], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (rows := await connected(http, url)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"connections {rows}, expected {expected}"
        await asyncio.sleep(0.05)  # ok-sleep: polling the connection list


def gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


# -- TLS ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "granian"])
async def test_https_serves_http2_streams_and_publishes(tmp_path: Path, cert: tuple[Path, Path], command: str) -> None:
    with tls_server(tmp_path, cert, command=command) as srv:
        async with h2_client(cert) as http:
            health = await http.get(f"{srv.url}/healthz")
            assert health.http_version == "HTTP/2"
            async with h2_stream(http, srv.url, "alice") as alice:
                await alice.wait_for(lambda: bool(alice.of_type("system")), 10)
                body = {"message": {"type": "json", "payload": {"hello": "tls"}}}
                answer = await http.post(f"{srv.url}/api/broadcast", json=body, headers={"x-api-key": API_KEY})
                assert answer.status_code == 202, answer.text
                assert answer.http_version == "HTTP/2"
                await alice.wait_for(lambda: bool(alice.of_type("json")), 10)
                assert b'"hello":"tls"' in alice.of_type("json")[0].data.encode()
                assert local_port(answer) == local_port(alice.response)  # one connection carried both
        # An HTTP/1.1 client still gets HTTP/1.1 (ALPN offers both with --http auto).
        async with httpx.AsyncClient(verify=trusting(cert[0])) as h1:
            assert (await h1.get(f"{srv.url}/healthz")).http_version == "HTTP/1.1"


async def test_http_1_serves_no_http2(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    with tls_server(tmp_path, cert, args=("--http", "1")) as srv:
        async with httpx.AsyncClient(http2=True, verify=trusting(cert[0])) as http:
            assert (await http.get(f"{srv.url}/healthz")).http_version == "HTTP/1.1"


async def test_plain_http_is_refused_on_the_tls_port(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    with tls_server(tmp_path, cert) as srv:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=3)
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate fails verification
            httpx.get(f"{srv.url}/healthz", timeout=3)


def test_serve_refuses_a_missing_certificate(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    argv = [str(BIN / "sse-fast"), "serve", "--ssl-certfile", str(tmp_path / "nope.pem"), "--ssl-keyfile", str(cert[1])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**os.environ, "SSE_FAST_PORT": "1"})
    assert result.returncode == 2
    assert "SSE_FAST_SSL_CERTFILE" in result.stderr
    assert "expected a readable file" in result.stderr
    # A key without its certificate is refused too, before anything binds.
    result = subprocess.run([*argv[:2], "--ssl-keyfile", str(cert[1])], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "must be set with SSE_FAST_SSL_KEYFILE" in result.stderr


# -- HTTP/2: one connection, many streams ---------------------------------------------------------------------------


async def broadcast(server: Server, cert: tuple[Path, Path], first: int, count: int) -> None:
    async with httpx.AsyncClient(verify=trusting(server_cert(cert)), timeout=10) as http:  # its own connection
        for n in range(first, first + count):
            body = {"message": {"type": "json", "payload": {"n": n, "pad": PAYLOAD}}}
            answer = await http.post(f"{server.url}/api/broadcast", json=body, headers={"x-api-key": API_KEY})
            assert answer.status_code == 202, answer.text


def server_cert(cert: tuple[Path, Path]) -> Path:
    return cert[0]


class RawH2:
    """An HTTP/2 client on one TLS socket that closes a stream the way a browser does: with RST_STREAM (CANCEL).

    (httpx never resets a stream it stops reading: it only forgets it, so the server cannot tell.)
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stalled: set[int] = set()  # streams whose data is never acknowledged: their window shuts

    @classmethod
    async def connect(cls, server: Server, cert: tuple[Path, Path]) -> RawH2:
        context = trusting(cert[0])
        context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        client.h2.initiate_connection()
        client.h2.increment_flow_control_window(2**24)  # the connection's window; each stream keeps 64 KiB
        await client.flush()
        client.task = asyncio.create_task(client.pump())
        return client

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def get(self, path: str) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "127.0.0.1")]
        self.h2.send_headers(stream_id, headers, end_stream=True)
        self.data[stream_id] = bytearray()
        await self.flush()
        return stream_id

    async def reset(self, stream_id: int) -> None:
        self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        await self.flush()

    async def pump(self) -> None:
        while chunk := await self.reader.read(65536):
            for event in self.h2.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                    if event.stream_id not in self.stalled:
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.add(event.stream_id)
            await self.flush()
            self.changed.set()
        self.ended.add(0)  # the connection itself
        self.changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"condition not met in {timeout}s"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.mark.parametrize("command", ["serve", "granian"])
async def test_a_closed_http2_stream_frees_its_connection_and_not_the_socket(
    tmp_path: Path, cert: tuple[Path, Path], command: str
) -> None:
    with tls_server(tmp_path, cert, command=command) as srv:
        client = await RawH2.connect(srv, cert)
        try:
            stays = await client.get("/sse?clientId=stays")
            leaves = await client.get("/sse?clientId=leaves")
            await client.wait_for(
                lambda: b"event: system" in client.data[stays] and b"event: system" in client.data[leaves]
            )
            async with httpx.AsyncClient(verify=trusting(cert[0])) as admin:  # its own connection
                await wait_connected(admin, srv.url, ["leaves", "stays"])
                await client.reset(leaves)
                await wait_connected(admin, srv.url, ["stays"])
                assert gauge((await admin.get(f"{srv.url}/metrics")).text, "sse_fast_connections") == 1
                await broadcast(srv, cert, 0, 1)
                # The other stream, on the same socket, still gets what is published: the connection stayed open.
                await client.wait_for(lambda: b"event: json" in client.data[stays])
                assert 0 not in client.ended
                assert stays not in client.ended
                # And the socket still takes new streams.
                again = await client.get("/sse?clientId=again")
                await wait_connected(admin, srv.url, ["again", "stays"])
                assert again not in client.ended
        finally:
            await client.close()


async def test_a_stalled_http2_stream_is_cut_alone(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    """Two streams on one HTTP/2 connection (ASGI, what serve runs for HTTP/2); one stops reading during 24 MB."""
    env = {"SSE_FAST_QUEUE_BYTES": "262144", "SSE_FAST_MAX_BODY": "65536", "SSE_FAST_REPLAY_BYTES": "1048576"}
    messages = 400
    with tls_server(tmp_path, cert, **env) as srv:
        client = await RawH2.connect(srv, cert)
        try:
            fast = await client.get("/sse?clientId=fast")
            slow = await client.get("/sse?clientId=slow")
            client.stalled.add(slow)
            async with httpx.AsyncClient(verify=trusting(cert[0])) as admin:  # its own connection
                await wait_connected(admin, srv.url, ["fast", "slow"])
                await broadcast(srv, cert, 0, messages)
                await client.wait_for(lambda: client.data[fast].count(b"event: json") >= messages, 60)
                await wait_connected(admin, srv.url, ["fast"])  # the stalled one was cut
                metrics = (await admin.get(f"{srv.url}/metrics")).text
                assert gauge(metrics, "sse_fast_slow_consumer_closes_total") >= 1
            received = [int(part.split(b",")[0]) for part in bytes(client.data[fast]).split(b'"n":')[1:]]
            assert received == list(range(messages))
            assert b"slow_consumer" not in client.data[fast]
            assert 0 not in client.ended  # the shared connection is still open
            assert fast not in client.ended
            assert len(client.data[slow]) <= 2**16  # its window: the server never overran it
        finally:
            await client.close()


async def test_rsgi_http2_streams_are_bounded_by_cutting_them(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    """Plain granian (RSGI) under HTTP/2: granian reports nothing per stream, so each stream is cut once
    SSE_FAST_QUEUE_BYTES has been written to it; the shared connection stays open and the clients resume."""
    env = {"SSE_FAST_QUEUE_BYTES": "262144", "SSE_FAST_MAX_BODY": "65536", "SSE_FAST_REPLAY_BYTES": "1048576"}
    with tls_server(tmp_path, cert, command="granian", **env) as srv:
        client = await RawH2.connect(srv, cert)
        try:
            fast = await client.get("/sse?clientId=fast")
            slow = await client.get("/sse?clientId=slow")
            client.stalled.add(slow)
            async with httpx.AsyncClient(verify=trusting(cert[0])) as admin:
                await wait_connected(admin, srv.url, ["fast", "slow"])
                await broadcast(srv, cert, 0, 40)  # 2.4 MB: far past the bound of both
                await wait_connected(admin, srv.url, [])
                assert gauge((await admin.get(f"{srv.url}/metrics")).text, "sse_fast_slow_consumer_closes_total") == 2
                await client.wait_for(lambda: b"slow_consumer" in client.data[fast])
                assert 0 not in client.ended  # only the streams ended, never the shared connection
                await client.get("/sse?clientId=again")
                await wait_connected(admin, srv.url, ["again"])
            assert "HTTP/2 under RSGI" in srv.log()
        finally:
            await client.close()
