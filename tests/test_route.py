"""The routing rule exposed as ``route_admits``, checked against the model in tests/reference/hub.py.

``route_admits`` is the core's ``RouteRef::admits``, the rule the hub and the replay log route by; a broker that keeps
its log elsewhere (Redis) asks it when it replays. The oracle is the model's ``Route.of(...).admits`` (target, else
topic patterns with ``*`` one segment and a final ``>`` one or more, else broadcast minus ``exclude``).
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.hub import Route
from sse_fast._core import Frame, Hub, route_admits

CLIENTS = st.sampled_from(["", "alice", "bob", "carol"])
SEGMENTS = st.sampled_from(["a", "b", "c"])
TOPICS = st.lists(SEGMENTS, min_size=1, max_size=3).map(".".join)
#: Anything at all, valid or not: empty strings, empty segments, `*` and `>` anywhere, in topics as in patterns.
ANY_TEXT = st.text(alphabet="ab.*>", max_size=6)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.one_of(SEGMENTS, st.just("*")), min_size=1, max_size=3))
    if draw(st.booleans()):
        segments.append(">")
    return ".".join(segments)


def routes(topics: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    """The keywords of one route, as ``Hub.publish`` takes them: target, or topic, or a broadcast (maybe exclude)."""
    return st.one_of(
        st.builds(lambda client: {"target": client}, CLIENTS),
        st.builds(lambda topic: {"topic": topic}, topics),
        st.builds(lambda client: {} if client is None else {"exclude": client}, st.one_of(st.none(), CLIENTS)),
    )


@settings(max_examples=500)
@given(client=CLIENTS, subscribed=st.lists(patterns(), max_size=4), route=routes(TOPICS))
def test_admits_like_the_model(client: str, subscribed: list[str], route: dict[str, str]) -> None:
    assert route_admits(client, subscribed, **route) == Route.of(**route).admits(client, subscribed)


@settings(max_examples=500)
@given(client=CLIENTS, subscribed=st.lists(ANY_TEXT, max_size=4), route=routes(ANY_TEXT))
def test_admits_like_the_model_on_invalid_topics_and_patterns(
    client: str, subscribed: list[str], route: dict[str, str]
) -> None:
    assert route_admits(client, subscribed, **route) == Route.of(**route).admits(client, subscribed)


@settings(max_examples=200)
@given(client=CLIENTS, subscribed=st.lists(patterns(), max_size=4), route=routes(TOPICS))
def test_admits_whom_the_hub_delivers_to(client: str, subscribed: list[str], route: dict[str, str]) -> None:
    hub = Hub(queue_frames=4, queue_bytes=1 << 16, id_prefix="e-")
    hub.add(client, subscribed)
    delivered = hub.publish(Frame(b"{}", event="json", seq=1), **route).delivered
    assert route_admits(client, subscribed, **route) == (delivered == 1)


@pytest.mark.parametrize(
    ("client", "subscribed", "route", "admitted"),
    [
        ("alice", [], {"target": "alice"}, True),
        ("bob", [">"], {"target": "alice"}, False),
        ("", [], {"target": ""}, True),
        ("alice", ["orders.*"], {"topic": "orders.eu"}, True),
        ("alice", ["orders.*"], {"topic": "orders.eu.created"}, False),
        ("alice", ["orders.>"], {"topic": "orders.eu.created"}, True),
        ("alice", ["orders.>"], {"topic": "orders"}, False),
        ("alice", ["*.eu.>", "x"], {"topic": "orders.eu.created"}, True),
        ("alice", [], {"topic": "orders"}, False),
        ("alice", [], {}, True),
        ("", [], {}, True),
        ("alice", [">"], {"exclude": "alice"}, False),
        ("bob", [], {"exclude": "alice"}, True),
        ("", [], {"exclude": ""}, False),
        # Nothing is validated: an empty topic or pattern matches nothing, an invalid one is compared as it is.
        ("alice", ["", ">", "*"], {"topic": ""}, False),
        ("alice", [""], {"topic": "a"}, False),
        ("alice", ["a.>"], {"topic": "a.*"}, True),
    ],
)
def test_admits(client: str, subscribed: list[str], route: dict[str, str], admitted: bool) -> None:
    assert route_admits(client, subscribed, **route) is admitted


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ({"target": "a", "topic": "t"}, "target or topic, not both"),
        ({"target": "a", "topic": "t", "exclude": "x"}, "target or topic, not both"),
        ({"target": "a", "exclude": "x"}, "exclude only applies to a broadcast"),
        ({"topic": "t", "exclude": "x"}, "exclude only applies to a broadcast"),
    ],
)
def test_refuses_the_keywords_publish_refuses(route: dict[str, str], reason: str) -> None:
    hub = Hub(queue_frames=4, queue_bytes=1 << 16, id_prefix="e-")
    with pytest.raises(ValueError, match=reason) as refused:
        hub.publish(Frame(b"{}", event="json", seq=1), **route)
    with pytest.raises(ValueError, match=reason) as also_refused:
        route_admits("a", ["t"], **route)
    assert also_refused.value.args == refused.value.args


def test_takes_any_sequence_of_patterns_but_not_a_str() -> None:
    assert route_admits("a", ("x", "t.*"), topic="t.1")
    with pytest.raises(TypeError):
        route_admits("a", "t", topic="t")
    with pytest.raises(TypeError):
        route_admits("a", ["t", 1], topic="t")  # type: ignore[list-item]
