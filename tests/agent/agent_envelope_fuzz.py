"""Generated hostile MQTT traffic for an agent: mutations of valid cloud envelopes, by family.

Every case is one message on a topic the agent subscribes to: ``rounds/current``,
``model/{cluster}`` or ``receipts/{site}``. The envelope mutations are the
cloud fuzz's (``tests.support.envelope_mutations``); the material is what a
cloud sends. Families (seeded, fixed weights):

- ``valid_round``: a correct, signed announcement (rounds only move forward; a
  lower number is kept as stale); it points at a base version that never arrives,
  so nothing trains;
- ``valid_receipt``: a correct, signed receipt for an update this site never made;
- ``replay``: the bytes of an earlier case again;
- ``truncated``, ``bit_flip``, ``nesting``, ``header_lie``, ``random_bytes``:
  broken bytes of a round, a model or a receipt;
- ``type_swap``: a value swapped for one of another type; half re-signed with the
  cloud's key so they meet the schema checks;
- ``extreme_number``: round, deadline, recipe values, a model's round, a receipt's
  round set to 2**63, 1e308, -1... re-signed, or a 5000-digit literal;
- ``wrong_signer``: valid envelopes signed by another key;
- ``wrong_kind``: an update, a twin state, a round where a model or receipt belongs;
- ``hostile_recipe``: a signed round asking for 10**6 epochs, a 2**40 batch, lr 1e3.

Signed mutations of a model go to cluster ``elsewhere``, which the announcements
never assign this site: a cloud-signed model is the cloud's to send, so only what
the agent must refuse is aimed at the installed model; unsigned junk goes to
``model/global``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import numpy as np

from ftlct.protocol import exchange
from ftlct.protocol.envelope import seal
from ftlct.protocol.identity import Identity
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.receipt import Receipt
from ftlct.protocol.topics import Topics
from ftlct.protocol.twin_state import TwinState
from tests.cloud.envelope_fuzz import FuzzCase, draw_cases, new_identity
from tests.support.envelope_mutations import EnvelopeMutator, resign, split

FAMILIES = {
    "valid_round": 4,
    "valid_receipt": 3,
    "replay": 5,
    "truncated": 10,
    "bit_flip": 12,
    "type_swap": 14,
    "nesting": 6,
    "extreme_number": 12,
    "wrong_signer": 8,
    "wrong_kind": 5,
    "header_lie": 6,
    "random_bytes": 6,
    "hostile_recipe": 4,
}
ROUND_NUMBERS = (("payload", "round"), ("payload", "deadline"), ("created",))
RECIPE_NUMBERS = ("local_epochs", "batch_size", "lr", "fedprox_mu", "max_delta_norm")


class AgentEnvelopeFuzzer:
    """Cases against an agent of ``site`` that pins ``cloud``'s key, ``labels`` and backbone."""

    def __init__(
        self,
        federation: str,
        site: str,
        cloud: Identity,
        labels: list[str],
        backbone_sha256: str,
        head_shapes: dict[str, tuple[int, ...]],
        seed: int = 0,
    ):
        self.federation = federation
        self.site = site
        self.cloud = cloud
        self.labels = labels
        self.backbone = backbone_sha256
        self.head_shapes = head_shapes
        self.topics = Topics(federation)
        self.rng = random.Random(seed)
        self.mutate = EnvelopeMutator(self.rng)
        self.forger = new_identity("cloud")
        self.sent: list[FuzzCase] = []
        self._round = 0

    # ------------------------------------------------------------ valid material
    def round(self, training: dict | None = None, signer: Identity | None = None) -> bytes:
        self._round += 1
        now = 1_700_000_000.0 + len(self.sent)
        announcement = RoundAnnouncement(
            round=self._round,
            strategy="ftl",
            deadline=now + 600,
            opened_at=now,
            base_versions={"global": "v-never"},
            min_sites=1,
            training=training or {"local_epochs": 2, "lr": 0.01, "max_delta_norm": 5.0},
        )
        return exchange.build_round(signer or self.cloud, self.federation, announcement)

    def model(self, cluster: str, signer: Identity | None = None) -> bytes:
        weights = {
            name: np.asarray(self.rng.random() * np.ones(shape), np.float32)
            for name, shape in self.head_shapes.items()
        }
        model = GlobalModel(
            cluster=cluster,
            version=f"fz-{self.rng.getrandbits(32):08x}",
            round=self.rng.randint(1, 50),
            labels=list(self.labels),
            backbone_sha256=self.backbone,
            weights=weights,
        )
        return exchange.build_global_model(signer or self.cloud, self.federation, model)

    def receipt(self, signer: Identity | None = None, site: str | None = None) -> bytes:
        receipt = Receipt(
            site or self.site,
            f"fz{self.rng.getrandbits(64):016x}",
            self.rng.randint(1, 50),
            self.rng.choice(["accepted", "duplicate", "rejected"]),
        )
        if receipt.outcome == "rejected":
            receipt = Receipt(receipt.site, receipt.update_id, receipt.round, "rejected", "norm")
        return seal("receipt", self.federation, receipt.to_payload(), signer or self.cloud)

    def _material(self) -> tuple[str, bytes, str]:
        """A valid envelope to mutate: (what, bytes, the topic unsigned junk goes to)."""
        what = self.rng.choice(["round", "model", "receipt"])
        if what == "round":
            return what, self.round(), self.topics.rounds_current
        if what == "model":
            return what, self.model("global"), self.topics.model("global")
        return what, self.receipt(), self.topics.receipts(self.site)

    def _signed_topic(self, what: str) -> str:
        """Where a re-signed mutation goes: never the site's own cluster's model."""
        if what == "model":
            return self.topics.model("elsewhere")
        return self.topics.rounds_current if what == "round" else self.topics.receipts(self.site)

    def _signed_material(self, what: str) -> bytes:
        return self.model("elsewhere") if what == "model" else self._material_of(what)

    def _material_of(self, what: str) -> bytes:
        return self.round() if what == "round" else self.receipt()

    # ------------------------------------------------------------ families
    def cases(self, count: int) -> Iterator[FuzzCase]:
        return draw_cases(self, FAMILIES, count, first="valid_round")

    def _valid_round(self) -> FuzzCase:
        if self._round > 3 and self.rng.random() < 0.3:  # an older number: kept as stale
            self._round -= 3
        return FuzzCase("valid_round", self.topics.rounds_current, self.round())

    def _valid_receipt(self) -> FuzzCase:
        return FuzzCase("valid_receipt", self.topics.receipts(self.site), self.receipt())

    def _replay(self) -> FuzzCase:
        earlier = self.rng.choice(self.sent)
        return FuzzCase("replay", earlier.topic, earlier.payload)

    def _truncated(self) -> FuzzCase:
        _what, data, topic = self._material()
        return FuzzCase("truncated", topic, self.mutate.truncate(data) or b"\x00")

    def _bit_flip(self) -> FuzzCase:
        _what, data, topic = self._material()
        return FuzzCase("bit_flip", topic, self.mutate.flip_bits(data))

    def _type_swap(self) -> FuzzCase:
        what, data, topic = self._material()
        if self.rng.random() < 0.5:
            signed = self._signed_material(what)
            return FuzzCase(
                "type_swap", self._signed_topic(what), self.mutate.swap_value(signed, self.cloud)
            )
        return FuzzCase("type_swap", topic, self.mutate.swap_value(data))

    def _nesting(self) -> FuzzCase:
        _what, data, topic = self._material()
        return FuzzCase("nesting", topic, self.mutate.nest(data))

    def _extreme_number(self) -> FuzzCase:
        what, data, topic = self._material()
        if self.rng.random() < 0.2:
            return FuzzCase("extreme_number", topic, self.mutate.literal(data))
        signed = self._signed_material(what)
        if what == "round":
            path = self.rng.choice(
                [*ROUND_NUMBERS, *(("payload", "training", k) for k in RECIPE_NUMBERS)]
            )
        elif what == "model":
            path = self.rng.choice([("payload", "round"), ("created",)])
        else:
            path = ("payload", "round")
        mutated = self.mutate.set_number(signed, path, self.cloud)
        return FuzzCase("extreme_number", self._signed_topic(what), mutated)

    def _wrong_signer(self) -> FuzzCase:
        what = self.rng.choice(["round", "model", "receipt"])
        if what == "round":
            data, topic = self.round(signer=self.forger), self.topics.rounds_current
        elif what == "model":
            data, topic = self.model("global", self.forger), self.topics.model("global")
        else:  # a forged receipt, or the cloud's receipt for another site on this topic
            forged = self.rng.random() < 0.5
            data = self.receipt(self.forger) if forged else self.receipt(site="site-other")
            topic = self.topics.receipts(self.site)
        return FuzzCase("wrong_signer", topic, data)

    def _wrong_kind(self) -> FuzzCase:
        choice = self.rng.randrange(4)
        if choice == 0:
            data = exchange.build_update(
                self.cloud, self.federation, round=1, base_version="v0", cluster="global",
                n_samples=1, delta={"dense.0.bias": np.zeros(2, np.float32)},
            )  # fmt: skip
        elif choice == 1:
            data = seal("twin_state", self.federation, TwinState().to_json(), self.cloud)
        elif choice == 2:
            data = self.receipt()
        else:
            data = self.round()
        topic = self.rng.choice(
            [
                self.topics.rounds_current,
                self.topics.model("global"),
                self.topics.receipts(self.site),
            ]
        )
        if (choice == 2 and topic.endswith(self.site)) or (choice == 3 and "rounds" in topic):
            topic = self.topics.model("global")  # the right kind on the right topic is not junk
        return FuzzCase("wrong_kind", topic, data)

    def _header_lie(self) -> FuzzCase:
        what, data, topic = self._material()
        header, body = split(data)
        choice = self.rng.randrange(3)
        if choice == 0:
            lie = self.mutate.lie_about_length(data)
        elif choice == 1 and body:  # the body cut short (the header still describes it)
            lie = data[: len(data) - max(1, len(body) // 2)]
        else:  # a body that is not the one described, re-signed (models only carry bodies)
            signed = self._signed_material(what)
            header, body = split(signed)
            junk = self.rng.randbytes(64)
            return FuzzCase(
                "header_lie", self._signed_topic(what), resign(self.cloud, header, junk)
            )
        return FuzzCase("header_lie", topic, lie)

    def _random_bytes(self) -> FuzzCase:
        _what, _data, topic = self._material()
        noise = self.rng.randbytes(self.rng.randrange(1, 600))
        if self.rng.random() < 0.5:
            noise = b"FTLE" + struct.pack(">I", self.rng.randrange(0, 700)) + noise
        return FuzzCase("random_bytes", topic, noise)

    def _hostile_recipe(self) -> FuzzCase:
        training = self.rng.choice(
            [
                {"local_epochs": 10**6},
                {"batch_size": 2**40},
                {"lr": 1e3},
                {"lr": -1.0},
                {"fedprox_mu": 1e12},
                {"local_epochs": "forever"},
            ]
        )
        return FuzzCase("hostile_recipe", self.topics.rounds_current, self.round(training))
