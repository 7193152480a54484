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
PAYLOAD = "x" * 30_000


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
