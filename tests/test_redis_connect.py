"""A burst of stream openings with the Redis broker: every stream connects, and a broadcast reaches each once.

Regression: redis-py's asyncio pool failed the 101st concurrent call with ``Too many connections``, which the broker
took for an unreachable Redis; most streams of a burst got a ``broker_unavailable`` close or a 503 instead of their
``connect`` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from pathlib import Path

import httpx
import pytest

from _redis import running_redis
from _servers import Stream, open_stream, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

N = 500
#: Seconds within which every stream of the burst must have its connect frame once all have their response headers
#: (about 0.3 s when it works).
DEADLINE = 15.0


def _raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"the open-file limit ({hard}) is too low for {N} streams: raise it (CI has 20,000)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def _payloads(stream: Stream) -> list[object]:
    return [e["payload"] for e in stream.envelopes("json")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_burst_of_streams_all_connect_and_a_broadcast_reaches_each_once(tmp_path: Path, workers: int) -> None:
    _raise_open_file_limit(4 * N)
    (tmp_path / "redis").mkdir()
    env = {"SSE_FAST_KEEPALIVE": "30", "SSE_FAST_HEARTBEAT": "30", "SSE_FAST_WORKERS": str(workers)}
    with running_redis(tmp_path / "redis") as redis_server:
        env["SSE_FAST_BROKER"] = redis_server.url
        with running_server(tmp_path, env=env) as server:
            async with contextlib.AsyncExitStack() as stack:
                loop = asyncio.get_running_loop()
                streams = await asyncio.gather(
                    *(stack.enter_async_context(open_stream(server.url, client_id=f"burst-{i}")) for i in range(N))
                )
                # The deadline counts from when every response has started: opening 500 httpx clients takes the test
                # itself 13-14 s on a 2-core machine, which says nothing about the server.
                start = loop.time()
                refused = [(i, s.status, bytes(s.raw[:200])) for i, s in enumerate(streams) if s.status != 200]
                assert not refused, f"{len(refused)} of {N} refused, e.g. {refused[:3]}\n{server.log()[-2000:]}"

                async def connected(stream: Stream) -> None:
                    await stream.wait_for(lambda s: bool(s.system("connect")), DEADLINE - (loop.time() - start))

                results = await asyncio.gather(*(connected(s) for s in streams), return_exceptions=True)
                late = [i for i, r in enumerate(results) if r is not None]
                closes = [s.system("disconnect") for s in streams if s.system("disconnect")][:3]
                assert not late, f"{len(late)} of {N} got no connect frame within {DEADLINE}s; closes: {closes}"

                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                    for payload in ("first", "marker"):
                        answer = await http.post(
                            "/api/broadcast", json={"message": {"type": "json", "payload": payload}}
                        )
                        assert answer.status_code == 202, answer.text
                # The marker follows the first broadcast in the log: once a stream has it, it has all it will get.
                await asyncio.gather(*(s.wait_for(lambda s: "marker" in _payloads(s), 15) for s in streams))
                wrong = [(i, _payloads(s)) for i, s in enumerate(streams) if _payloads(s) != ["first", "marker"]]
                assert not wrong, f"{len(wrong)} of {N} streams got {wrong[:3]}"
