"""The fan-out hub: routing against the model in tests/reference/hub.py, queues, removal and overflow."""

import re
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.hub import HubModel, Route
from sse_fast._core import HIGH, LOW, Delivery, Frame, Hub
from sse_fast.errors import TopicError

CLIENTS = st.sampled_from(["alice", "bob", "carol", "dave"])
SEGMENTS = st.sampled_from(["a", "b", "c"])
TOPICS = st.lists(SEGMENTS, min_size=1, max_size=3).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.one_of(SEGMENTS, st.just("*")), min_size=1, max_size=3))
    if draw(st.booleans()):
        segments.append(">")
    return ".".join(segments)


ROUTES = st.one_of(
    st.builds(lambda client: {"target": client}, st.one_of(CLIENTS, st.just("nobody"))),
    st.builds(lambda topic: {"topic": topic}, TOPICS),
    st.builds(lambda client: {} if client is None else {"exclude": client}, st.one_of(st.none(), CLIENTS)),
)


def new_hub(queue_frames: int = 64, queue_bytes: int = 1 << 20) -> Hub:
    return Hub(queue_frames=queue_frames, queue_bytes=queue_bytes, id_prefix="e1-")


def numbers(body: bytes) -> list[int]:
    """The `n` of every `data: {"n":<n>}` line, in order."""
    return [int(n) for n in re.findall(rb'^data: \{"n":(\d+)\}$', body, flags=re.MULTILINE)]


@settings(max_examples=200)
@given(
    conns=st.lists(st.tuples(CLIENTS, st.lists(patterns(), max_size=4)), max_size=10),
    removed=st.sets(st.integers(0, 9)),
    routes=st.lists(ROUTES, min_size=1, max_size=8),
)
def test_publish_reaches_each_recipient_of_the_model_exactly_once(
    conns: list[tuple[str, list[str]]], removed: set[int], routes: list[dict[str, str]]
) -> None:
    hub, model = new_hub(), HubModel()
    ids = [hub.add(client, patterns) for client, patterns in conns]
    for conn, (client, patterns) in zip(ids, conns, strict=True):
        model.add(conn, client, patterns)
    for i in sorted(removed & set(range(len(ids)))):
        assert hub.remove(ids[i])
        model.remove(ids[i])
    expected: dict[int, list[int]] = {conn: [] for conn in model.conns}
    for n, route in enumerate(routes):
        delivery = hub.publish(Frame(b'{"n":%d}' % n, event="json"), **route)
        recipients = model.recipients(Route.of(**route))
        assert delivery.delivered == len(recipients)
        assert sorted(delivery.woken) == sorted(c for c in recipients if not expected[c])
        assert (delivery.overflowed, delivery.dropped) == ([], 0)
        for conn in recipients:
            expected[conn].append(n)
    for client in ["alice", "bob", "carol", "dave"]:
        assert hub.connections_of(client) == model.connections_of(client)
    for conn, wanted in expected.items():
        assert numbers(hub.drain(conn)) == wanted
    counters = hub.counters()
    assert counters["published"] == len(routes)
    assert counters["delivered"] == sum(len(v) for v in expected.values())
    assert (counters["queued_frames"], counters["queued_bytes"]) == (0, 0)


@given(conns=st.lists(st.tuples(CLIENTS, st.lists(patterns(), max_size=4)), max_size=10), topic=TOPICS)
def test_removal_frees_everything(conns: list[tuple[str, list[str]]], topic: str) -> None:
    hub = new_hub()
    ids = [hub.add(client, patterns) for client, patterns in conns]
    hub.publish(Frame(b"{}", event="json", seq=1), topic=topic)
    hub.publish(Frame(b"{}", event="json", seq=2))
    hub.push_all(b": keepalive\n\n")
    for conn in ids:
        assert hub.remove(conn)
        assert not hub.remove(conn)
        assert conn not in hub
    counters = hub.counters()
    assert {k: counters[k] for k in ("connections", "clients", "queued_frames", "queued_bytes")} == dict.fromkeys(
        ("connections", "clients", "queued_frames", "queued_bytes"), 0
    )
    assert len(hub) == 0
    assert hub.publish(Frame(b"{}", event="json"), topic=topic).delivered == 0


def test_a_connection_matching_several_patterns_gets_one_copy() -> None:
    hub = new_hub()
    conn = hub.add("alice", ["news.*", "news.>", ">", "news.eu", "news.eu"])
    assert hub.topics_of(conn) == ["news.*", "news.>", ">", "news.eu"]
    delivery = hub.publish(Frame(b'{"n":1}', event="json"), topic="news.eu")
    assert (delivery.delivered, delivery.woken) == (1, [conn])
    assert numbers(hub.drain(conn)) == [1]


def test_woken_lists_only_queues_that_were_empty() -> None:
    hub = new_hub()
    a, b = hub.add("a"), hub.add("b")
    assert sorted(hub.publish(Frame(b"{}", event="json")).woken) == [a, b]
    assert hub.publish(Frame(b"{}", event="json")).woken == []
    hub.drain(a)
    assert hub.publish(Frame(b"{}", event="json")).woken == [a]


def test_exclude_skips_every_connection_of_that_client() -> None:
    hub = new_hub()
    hub.add("alice")
    hub.add("alice")
    bob = hub.add("bob")
    assert hub.publish(Frame(b"{}", event="json"), exclude="alice").woken == [bob]
    assert hub.publish(Frame(b"{}", event="json"), exclude="nobody").delivered == 3


def test_overflow_of_a_resumable_frame_is_reported() -> None:
    hub = new_hub(queue_frames=2)
    conn = hub.add("alice")
    for seq in (1, 2):
        assert hub.publish(Frame(b"{}", event="json", seq=seq)).delivered == 1
    delivery = hub.publish(Frame(b"{}", event="json", seq=3))
    assert (delivery.delivered, delivery.overflowed, delivery.woken) == (0, [conn], [])
    delivery = hub.publish(Frame(b"{}", event="json"))
    assert (delivery.delivered, delivery.dropped, delivery.overflowed) == (0, 1, [])
    assert hub.queue_stats(conn) == (2, 44, 2)
    counters = hub.counters()
    assert (counters["overflowed"], counters["dropped"], counters["queued_frames"]) == (1, 1, 2)


def test_ephemeral_frames_are_evicted_for_a_resumable_one() -> None:
    hub = new_hub(queue_frames=2)
    conn = hub.add("alice")
    for _ in range(2):
        hub.publish(Frame(b"{}", event="progress", priority=LOW))
    delivery = hub.publish(Frame(b"{}", event="json", seq=1))
    assert (delivery.delivered, delivery.dropped) == (1, 1)
    assert hub.counters()["evicted"] == 1
    assert hub.queue_stats(conn)[::2] == (2, 1)


def test_byte_bound_counts_frame_sizes() -> None:
    hub = new_hub(queue_bytes=50)
    conn = hub.add("alice")
    assert hub.publish(Frame(b"{}", event="json", seq=1)).delivered == 1
    assert hub.publish(Frame(b"{}", event="json", seq=2)).delivered == 1
    assert hub.publish(Frame(b"{}", event="json", seq=3)).overflowed == [conn]


def test_drain_writes_cursor_ids_and_tracks_the_watermark() -> None:
    hub = new_hub()
    conn = hub.add("alice")
    hub.set_watermark(conn, 4)
    hub.publish(Frame(b'{"n":5}', event="json", seq=5))
    assert hub.drain(conn) == b'id: e1-5\nevent: json\ndata: {"n":5}\n\n'
    assert hub.watermark(conn) == 5
    assert hub.drain(conn) == b""


def test_drain_respects_max_bytes_but_always_writes_one_frame() -> None:
    hub = new_hub()
    conn = hub.add("alice")
    for n in range(3):
        hub.publish(Frame(b'{"n":%d}' % n, event="json"))
    assert numbers(hub.drain(conn, 1)) == [0]
    assert numbers(hub.drain(conn)) == [1, 2]


def test_push_and_push_all() -> None:
    hub = new_hub()
    a, b = hub.add("a"), hub.add("b")
    delivery = hub.push(a, Frame(b'{"n":7}', event="system", priority=HIGH))
    assert isinstance(delivery, Delivery)
    assert (delivery.delivered, delivery.woken) == (1, [a])
    assert hub.push(999, Frame(b"{}", event="system")).delivered == 0
    assert hub.push_all(b": keepalive\n\n").woken == [b]
    assert hub.drain(a) == b'event: system\ndata: {"n":7}\n\n: keepalive\n\n'
    assert hub.drain(b) == b": keepalive\n\n"


class Transport:
    """What the hub's writers need of granian's RSGI transport: ``send_bytes`` answers a finished awaitable (an
    exhausted iterator: stepping it raises StopIteration), or, once the client is gone, one that raises."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.open = True

    def send_bytes(self, data: bytes) -> object:
        if not self.open:
            return Closed()
        self.sent.append(data)
        return iter(())


class Closed:
    def __next__(self) -> object:
        raise ConnectionResetError("closed")


def test_attached_writers_are_written_by_flush_with_one_shared_bytes() -> None:
    hub = new_hub()
    a, b, c = hub.add("a"), hub.add("b"), hub.add("c")
    ta, tb = Transport(), Transport()
    assert hub.attach(a, ta)
    assert hub.attach(b, tb)
    assert not hub.attach(999, Transport())
    assert (hub.attached(a), hub.attached(c)) == (True, False)
    delivery = hub.publish(Frame(b'{"n":1}', event="json", seq=5))
    assert (delivery.delivered, delivery.woken, delivery.ready, hub.pending) == (3, [c], 2, 2)
    assert hub.publish(Frame(b'{"n":2}', event="json")).ready == 0  # queued once until flushed
    assert hub.flush(12.5) is None
    assert ta.sent == tb.sent == [b'id: e1-5\nevent: json\ndata: {"n":1}\n\nevent: json\ndata: {"n":2}\n\n']
    assert ta.sent[0] is tb.sent[0], "the same bytes are one object"
    assert (hub.written_at(a), hub.written_at(c), hub.pending) == (12.5, None, 0)
    assert numbers(hub.drain(c)) == [1, 2], "an unattached connection is left to its caller"
    assert hub.flush(13.0) is None
    assert len(ta.sent) == 1, "nothing pending: nothing written"


def test_flush_reports_closed_streams_and_written_bytes() -> None:
    hub = new_hub()
    a, b = hub.add("a"), hub.add("b")
    ta, tb = Transport(), Transport()
    hub.attach(a, ta)
    hub.attach(b, tb)
    hub.report_bytes = 40
    frame = Frame(b'{"n":1}', event="json")  # 27 bytes on the wire
    hub.publish(frame)
    assert hub.flush(1.0) is None
    tb.open = False
    hub.publish(frame)
    assert hub.flush(2.0) == ([b], [(a, 54)])
    assert (hub.attached(b), hub.attached(a)) == (False, True), "a closed stream is detached"
    hub.publish(frame)
    assert hub.flush(3.0) is None
    assert hub.detach(a) == 27
    assert hub.detach(a) is None
    assert hub.publish(frame).woken == [a], "detached: woken for its caller again"


def test_removing_a_connection_drops_its_writer() -> None:
    hub = new_hub()
    a = hub.add("a")
    transport = Transport()
    hub.attach(a, transport)
    hub.publish(Frame(b'{"n":1}', event="json"))
    assert hub.remove(a)
    assert (hub.attached(a), hub.flush(1.0), transport.sent) == (False, None, [])


def test_unknown_connections_read_as_empty() -> None:
    hub = new_hub()
    assert hub.drain(42) == b""
    assert hub.watermark(42) == 0
    hub.set_watermark(42, 3)
    assert (hub.client_of(42), hub.topics_of(42), hub.queue_stats(42)) == (None, [], (0, 0, 0))
    assert "42" not in hub
    assert not hub.remove(42)


def test_connections_of_lists_oldest_first() -> None:
    hub = new_hub()
    first, second, third = hub.add("alice"), hub.add("alice"), hub.add("alice")
    assert hub.connections_of("alice") == [first, second, third]
    hub.remove(second)
    assert hub.connections_of("alice") == [first, third]
    assert hub.client_of(third) == "alice"
    assert hub.counters()["clients"] == 1


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ({"target": "a", "topic": "t"}, ValueError),
        ({"target": "a", "exclude": "b"}, ValueError),
        ({"topic": "a", "exclude": "b"}, ValueError),
        ({"topic": "a.*"}, TopicError),
        ({"topic": "a..b"}, TopicError),
    ],
)
def test_bad_routes_are_refused(route: dict[str, str], error: type[Exception]) -> None:
    hub = new_hub()
    hub.add("a", ["a.>"])
    with pytest.raises(error):
        hub.publish(Frame(b"{}", event="json"), **route)
    assert hub.counters()["published"] == 0


def test_an_invalid_pattern_adds_nothing() -> None:
    hub = new_hub()
    with pytest.raises(TopicError, match="last segment"):
        hub.add("alice", ["ok.*", "a.>.b"])
    assert (len(hub), hub.connections_of("alice")) == (0, [])


@pytest.mark.parametrize(
    "kwargs",
    [{"queue_frames": 0, "queue_bytes": 1, "id_prefix": ""}, {"queue_frames": 1, "queue_bytes": 1, "id_prefix": "a\n"}],
)
def test_bad_construction_is_a_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        Hub(**kwargs)  # type: ignore[arg-type]


def test_large_publishes_release_the_gil_and_still_route() -> None:
    hub = new_hub()
    conns = [hub.add(f"c{i}", [f"t.{i % 10}"]) for i in range(2000)]
    results: list[int] = []

    def publish() -> None:
        for _ in range(20):
            results.append(hub.publish(Frame(b"{}", event="json"), topic="t.3").delivered)

    worker = threading.Thread(target=publish)
    worker.start()
    worker.join(timeout=30)
    assert results == [200] * 20
    assert hub.publish(Frame(b"{}", event="json")).delivered == 2000
    assert hub.queue_stats(conns[3])[0] == 21
