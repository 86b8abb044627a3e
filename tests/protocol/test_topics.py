import pytest

from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.topics import Topics, parse_topic


def test_topic_names_follow_the_design_table():
    topics = Topics("ct-net")
    assert topics.rounds_current == "ftl/ct-net/rounds/current"
    assert topics.model("global.0") == "ftl/ct-net/model/global.0"
    assert topics.updates("site-a") == "ftl/ct-net/updates/site-a"
    assert topics.twin_state("site-a") == "ftl/ct-net/twins/site-a/state"
    assert topics.receipts("site-a") == "ftl/ct-net/receipts/site-a"
    assert topics.all_updates == "ftl/ct-net/updates/+"
    assert topics.all_twin_states == "ftl/ct-net/twins/+/state"


@pytest.mark.parametrize(
    ("topic", "kind", "subject"),
    [
        ("ftl/f/rounds/current", "round", None),
        ("ftl/f/model/global", "model", "global"),
        ("ftl/f/updates/a", "update", "a"),
        ("ftl/f/twins/a/state", "twin_state", "a"),
        ("ftl/f/receipts/a", "receipt", "a"),
    ],
)
def test_parse_topic_round_trips(topic, kind, subject):
    ref = parse_topic(topic)
    assert (ref.federation, ref.kind, ref.subject) == ("f", kind, subject)


@pytest.mark.parametrize(
    "topic",
    [
        "ftl/f/updates",
        "ftl/f/updates/a/b",
        "other/f/updates/a",
        "ftl/f/twins/a/x",
        "ftl/+/model/g",
        "ftl/f/receipts/+",
    ],
)
def test_parse_topic_refuses_other_topics(topic):
    with pytest.raises(ProtocolError) as info:
        parse_topic(topic)
    assert info.value.reason == "bad_topic"


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "-a", "x" * 65, "a b"])
def test_names_that_would_break_topics_are_refused(name):
    with pytest.raises(ValueError, match="name"):
        Topics("f").updates(name)
