"""Topic validation and NATS-style matching, checked against tests/reference/hub.py."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference.hub import is_valid_topic, matches
from sse_fast._core import topic_matches, validate_topic
from sse_fast.errors import SseFastError, TopicError

VALID_TOPICS = ["a", "a.b.c", "orders.eu-west.created", "A-z_0:9/x", "user:42/inbox", "x" * 128, "1.2.3"]
INVALID_TOPICS = [
    ("", "empty"),
    (".", "empty segment"),
    ("a.", "empty segment"),
    (".a", "empty segment"),
    ("a..b", "empty segment"),
    ("a b", "not allowed"),
    ("a.*", "only allowed in patterns"),
    ("a.>", "only allowed in patterns"),
    ("café", "not allowed"),
    ("a\nb", "not allowed"),
    ("x" * 129, "limit is 128"),
]
VALID_PATTERNS = ["*", ">", "a.*", "a.>", "*.b.>", "*.*", "a.b"]
INVALID_PATTERNS = [
    (">.a", "last segment"),
    ("a.>.b", "last segment"),
    ("a*", "whole segments"),
    ("a.b>", "whole segments"),
    ("**", "whole segments"),
    ("a..*", "empty segment"),
    ("", "empty"),
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_valid_topics_pass_as_topics_and_patterns(topic: str) -> None:
    validate_topic(topic)
    validate_topic(topic, pattern=True)


@pytest.mark.parametrize(("topic", "reason"), INVALID_TOPICS)
def test_invalid_topics_raise_topic_error_saying_why(topic: str, reason: str) -> None:
    with pytest.raises(TopicError, match=reason):
        validate_topic(topic)


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_valid_patterns(pattern: str) -> None:
    validate_topic(pattern, pattern=True)


@pytest.mark.parametrize(("pattern", "reason"), INVALID_PATTERNS)
def test_invalid_patterns_raise_topic_error_saying_why(pattern: str, reason: str) -> None:
    with pytest.raises(TopicError, match=reason):
        validate_topic(pattern, pattern=True)


def test_topic_error_is_a_value_error_under_the_base_class() -> None:
    with pytest.raises(ValueError, match="empty") as info:
        validate_topic("")
    assert isinstance(info.value, SseFastError)


def test_long_topics_are_cut_short_in_the_message() -> None:
    with pytest.raises(TopicError) as info:
        validate_topic("y" * 10_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("a.>", "a", False),
        ("a.>", "a.b.c", True),
        (">", "anything.at.all", True),
        ("*.b.>", "x.b.y", True),
        ("user:1/*", "user:1/inbox", False),  # `/` and `:` are ordinary characters: one segment
        ("a", "", False),
    ],
)
def test_topic_matches_table(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


SEGMENTS = st.sampled_from(["a", "b", "c", "a:1", "x/y"])
TOPICS = st.lists(SEGMENTS, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.one_of(SEGMENTS, st.just("*")), min_size=1, max_size=5))
    if draw(st.booleans()):
        segments.append(">")
    return ".".join(segments)


@given(pattern=patterns(), topic=TOPICS)
def test_topic_matches_agrees_with_the_reference(pattern: str, topic: str) -> None:
    assert topic_matches(pattern, topic) is matches(pattern, topic)


@given(text=st.text(alphabet="ab.*>:/-_ é\n", max_size=12), pattern=st.booleans())
def test_validate_topic_agrees_with_the_reference(text: str, pattern: bool) -> None:
    if is_valid_topic(text, pattern=pattern):
        validate_topic(text, pattern=pattern)
    else:
        with pytest.raises(TopicError):
            validate_topic(text, pattern=pattern)
