"""MQTT topic names under ``ftl/{federation}/`` (DESIGN.md, "MQTT topics"), built and parsed here only.

| topic                         | direction     | retained |
| ``ftl/F/rounds/current``      | cloud -> all  | yes      |
| ``ftl/F/model/{cluster}``     | cloud -> all  | yes      |
| ``ftl/F/best/{cluster}``      | cloud -> all  | yes      |
| ``ftl/F/updates/{site}``      | site -> cloud | no, QoS 1|
| ``ftl/F/twins/{site}/state``  | site -> cloud | yes, LWT |
| ``ftl/F/receipts/{site}``     | cloud -> site | no, QoS 1|
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftlct.protocol.errors import ProtocolError

PREFIX = "ftl"
# Names travel in topics, file names and SQL: letters, digits, '_', '-', '.', no wildcards.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid federation/site/cluster name, else ``ValueError``."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(
            f"{kind} name {value!r}: use 1-64 letters, digits, '_', '-', '.' (starting alphanumeric)"
        )
    return value


class Topics:
    """The topic names of one federation."""

    def __init__(self, federation: str):
        self.federation = check_name("federation", federation)
        self.root = f"{PREFIX}/{federation}"

    @property
    def rounds_current(self) -> str:
        return f"{self.root}/rounds/current"

    def model(self, cluster: str) -> str:
        return f"{self.root}/model/{check_name('cluster', cluster)}"

    def best_model(self, cluster: str) -> str:
        """The cluster's best global version so far by the sites' validation reports."""
        return f"{self.root}/best/{check_name('cluster', cluster)}"

    def updates(self, site: str) -> str:
        return f"{self.root}/updates/{check_name('site', site)}"

    def twin_state(self, site: str) -> str:
        return f"{self.root}/twins/{check_name('site', site)}/state"

    def receipts(self, site: str) -> str:
        return f"{self.root}/receipts/{check_name('site', site)}"

    # subscriptions
    @property
    def all_models(self) -> str:
        return f"{self.root}/model/+"

    @property
    def all_best_models(self) -> str:
        return f"{self.root}/best/+"

    @property
    def all_updates(self) -> str:
        return f"{self.root}/updates/+"

    @property
    def all_twin_states(self) -> str:
        return f"{self.root}/twins/+/state"

    def site_subscriptions(self, site: str) -> list[str]:
        """What a site subscribes to: the round, every cluster's model, its own receipts
        (the broker's ACL lets a site read no one else's)."""
        return [self.rounds_current, self.all_models, self.receipts(site)]


@dataclass(frozen=True)
class TopicRef:
    federation: str
    kind: str  # "round" | "model" | "best_model" | "update" | "twin_state" | "receipt"
    subject: str | None  # cluster for model / best_model, site for update / twin_state / receipt


def parse_topic(topic: str) -> TopicRef:
    """What a topic names; ``ProtocolError('bad_topic')`` for anything outside the table."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != PREFIX or not NAME.match(parts[1]):
        raise ProtocolError("bad_topic", f"not an ftl topic: {topic!r}")
    federation, rest = parts[1], parts[2:]
    if rest == ["rounds", "current"]:
        return TopicRef(federation, "round", None)
    if len(rest) == 2 and rest[0] == "model" and NAME.match(rest[1]):
        return TopicRef(federation, "model", rest[1])
    if len(rest) == 2 and rest[0] == "best" and NAME.match(rest[1]):
        return TopicRef(federation, "best_model", rest[1])
    if len(rest) == 2 and rest[0] == "updates" and NAME.match(rest[1]):
        return TopicRef(federation, "update", rest[1])
    if len(rest) == 3 and rest[0] == "twins" and rest[2] == "state" and NAME.match(rest[1]):
        return TopicRef(federation, "twin_state", rest[1])
    if len(rest) == 2 and rest[0] == "receipts" and NAME.match(rest[1]):
        return TopicRef(federation, "receipt", rest[1])
    raise ProtocolError("bad_topic", f"unknown ftl topic: {topic!r}")
