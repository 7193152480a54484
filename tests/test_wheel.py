"""The wheel, as ``pip install sse-fast`` gives it: installed into a fresh virtualenv with no Rust toolchain on the
PATH, its ``sse-fast serve``, ``publish`` and ``listen`` run as real processes over real HTTP on loopback.

The wheel is ``dist/``'s (``make wheel``, which ``make test`` runs first) when it is newer than every source file;
otherwise this module builds one with maturin into a temporary directory (a minute or more: the release build).
The dependencies come from a wheelhouse kept in ``target/wheelhouse`` (filled from PyPI the first time), so that a
run installs without the network.
"""

from __future__ import annotations

import email
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import sse_fast
from _servers import ROOT, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

WHEELHOUSE = ROOT / "target" / "wheelhouse"
SOURCES = ("python/sse_fast", "rust/core", "rust/py", "Cargo.toml", "pyproject.toml", "README.md", "LICENSE")


@dataclass
class Installed:
    """The wheel and sdist under test, and the virtualenv the wheel is installed in."""

    wheel: Path
    sdist: Path | None
    venv: Path
    env: dict[str, str]  # a PATH with the venv and without cargo or rustc; no VIRTUAL_ENV, PYTHONPATH, SSE_FAST_*
    home: Path  # an empty working directory: nothing of the checkout is importable from there

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env=self.env, cwd=self.home, capture_output=True, text=True, timeout=timeout, check=False
        )


def _newest_source() -> float:
    newest = 0.0
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else path.rglob("*")
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".so":
                newest = max(newest, file.stat().st_mtime)
    return newest


def _built(directory: Path) -> tuple[Path, Path | None] | None:
    """The wheel (and sdist) of this version in ``directory``, if newer than every source."""
    wheels = sorted(directory.glob(f"sse_fast-{sse_fast.__version__}-cp311-abi3-*.whl"))
    if not wheels or wheels[-1].stat().st_mtime < _newest_source():
        return None
    sdist = directory / f"sse_fast-{sse_fast.__version__}.tar.gz"
    return wheels[-1], sdist if sdist.exists() and sdist.stat().st_mtime >= _newest_source() else None


def _build(directory: Path) -> tuple[Path, Path | None]:
    maturin = str(Path(sys.executable).parent / "maturin")
    for command in (["build", "--release", "-i", sys.executable], ["sdist"]):
        subprocess.run([maturin, *command, "-o", str(directory)], cwd=ROOT, check=True, capture_output=True)
    built = _built(directory)
    assert built is not None, f"maturin built nothing usable in {directory}"
    return built


def _toolchain_free_env(venv: Path) -> dict[str, str]:
    """The environment of a user without Rust: every PATH entry holding cargo or rustc (~/.cargo/bin) left out."""
    kept = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry
        and not any(shutil.which(tool, path=entry) for tool in ("cargo", "rustc"))
        and Path(entry).resolve() != Path(sys.executable).parent.resolve()  # nor the checkout's .venv
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SSE_FAST_", "CARGO", "RUSTUP", "PYO3", "MATURIN"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *kept])
    return env


def _pip_install(pip: list[str], wheel: Path, env: dict[str, str]) -> None:
    offline = [*pip, "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), str(wheel)]
    if subprocess.run(offline, env=env, capture_output=True, check=False).returncode == 0:
        return
    # First run, or the dependencies changed: fill the wheelhouse from PyPI (the pip cache helps), then install.
    subprocess.run([*pip, "download", "-q", "-d", str(WHEELHOUSE), str(wheel)], env=env, check=True)
    for own in WHEELHOUSE.glob("sse_fast-*"):
        own.unlink()
    subprocess.run(offline, env=env, check=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    built = _built(ROOT / "dist") or _build(tmp_path_factory.mktemp("dist"))
    root = tmp_path_factory.mktemp("wheel")
    venv, home = root / "venv", root / "home"
    home.mkdir()
    # A fresh virtualenv; this interpreter's pip installs into it (--python), which saves bootstrapping one (10 s).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = _toolchain_free_env(venv)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check"]
    _pip_install(pip, built[0], env)
    return Installed(built[0], built[1], venv, env, home)


def test_no_rust_toolchain_is_on_the_path(installed: Installed) -> None:
    for tool in ("cargo", "rustc"):
        assert shutil.which(tool, path=installed.env["PATH"]) is None
        assert installed.run("sh", "-c", f"command -v {tool}").returncode != 0


def test_the_installed_package_is_the_wheel_release_build(installed: Installed) -> None:
    probe = "import sse_fast; print(sse_fast.__file__, sse_fast.__version__, sse_fast.build_profile)"
    where, version, profile = installed.run(installed.bin("python"), "-c", probe).stdout.split()
    assert Path(where).is_relative_to(installed.venv)
    assert (version, profile) == (sse_fast.__version__, "release")
    assert installed.run(installed.bin("sse-fast"), "--version").stdout.strip() == f"sse-fast {version}"


def test_one_version_everywhere(installed: Installed) -> None:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]  # maturin takes it from Cargo.toml
    assert sse_fast.__version__ == cargo
    assert installed.wheel.name.startswith(f"sse_fast-{cargo}-cp311-abi3-")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = f"\n## [{cargo}] - " in changelog
    assert released or f"to be tagged {cargo}." in changelog.split("\n## [Unreleased]", 1)[1].split("\n## ")[0]


def test_the_wheel_carries_license_metadata_static_files_and_no_stray_files(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"sse_fast-{sse_fast.__version__}.dist-info"
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
        license_text = wheel.read(f"{info}/licenses/LICENSE").decode()
    static = {f"sse_fast/static/{p.name}" for p in (ROOT / "python/sse_fast/static").iterdir() if p.is_file()}
    assert {"sse_fast/static/sse-fast.js", "sse_fast/static/admin.html"} <= static <= names
    assert {"sse_fast/_core.abi3.so", "sse_fast/_core.pyi", "sse_fast/py.typed", "sse_fast/cli.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "MIT License" in license_text
    assert "Copyright (c) 2026 the sse-fast authors" in license_text
    classifiers = metadata.get_all("Classifier") or []
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Operating System ::") for c in classifiers)
    assert any(c.startswith("Topic ::") for c in classifiers)
    assert metadata["Requires-Python"] == ">=3.11"
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("granian") for r in requires)
    assert not any(r.startswith("orjson") for r in requires)  # declared once, never imported: dropped


def test_the_sdist_carries_the_sources_and_the_license(installed: Installed, tmp_path: Path) -> None:
    sdist = installed.sdist or _build(tmp_path)[1]
    assert sdist is not None
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "Cargo.toml", "rust/core/Cargo.toml", "python/sse_fast/cli.py"} <= names
    assert "python/sse_fast/static/sse-fast.js" in names
    assert not [n for n in names if n.endswith(".so") or "__pycache__" in n]


@pytest.fixture(scope="module")
def server(installed: Installed) -> Iterator[str]:
    port = free_port()
    log = installed.home / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed.bin("sse-fast"), "serve", "--port", str(port)],
            env=installed.env,
            cwd=installed.home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _healthy(url):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # ok-sleep: polling a starting process
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_publish_and_listen_from_the_installed_wheel(installed: Installed, server: str) -> None:
    listen = subprocess.Popen(
        [installed.bin("sse-fast"), "listen", server, "--client-id", "alice", "--json"],
        env=installed.env,
        cwd=installed.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listen.stdout is not None
        _readable_within(listen.stdout, 15)
        assert '"event":"connect"' in listen.stdout.readline()
        published = installed.run(installed.bin("sse-fast"), "publish", server, '{"n": 1}', "--target", "alice")
        assert published.returncode == 0, published.stderr
        assert '"delivered":1' in published.stdout
        _readable_within(listen.stdout, 15)
        line = listen.stdout.readline()
        assert '"payload":{"n":1}' in line
        assert '"type":"json"' in line
    finally:
        listen.send_signal(signal.SIGINT)
        try:
            _, errors = listen.communicate(timeout=10)  # also closes the pipes
        except subprocess.TimeoutExpired:
            listen.kill()
            _, errors = listen.communicate()
    assert listen.returncode == 0, errors
    assert "connecting -> connected" in errors


def _readable_within(stream: object, seconds: float) -> None:
    """Wait for a line on a pipe (the listener prints one per event), failing after ``seconds``."""
    import select

    readable, _, _ = select.select([stream], [], [], seconds)
    assert readable, f"nothing printed within {seconds} s"


def test_the_installed_server_serves_the_browser_sdk_and_the_admin_page(installed: Installed, server: str) -> None:
    sdk = httpx.get(f"{server}/sdk/sse-fast.js", timeout=5)
    assert sdk.status_code == 200
    assert "javascript" in sdk.headers["content-type"]
    assert sdk.content == (ROOT / "python/sse_fast/static/sse-fast.js").read_bytes()
    admin = httpx.get(f"{server}/admin", timeout=5)
    assert admin.status_code == 200
    assert "text/html" in admin.headers["content-type"]
    assert admin.content == (ROOT / "python/sse_fast/static/admin.html").read_bytes()


def test_a_closed_port_is_the_network_exit_code_from_the_wheel_too(installed: Installed) -> None:
    with socket.socket() as sock:  # bound, never listening: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        published = installed.run(installed.bin("sse-fast"), "publish", url, "x", "--timeout", "5")
    assert published.returncode == 3, published.stderr
    assert "cannot reach" in published.stderr
