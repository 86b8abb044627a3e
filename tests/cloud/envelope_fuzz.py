"""Generated hostile MQTT traffic for the cloud: mutations of valid envelopes, by family.

Every case is one MQTT message (topic, payload, retained flag) the cloud
subscribes to. Families (``FAMILIES``, drawn with fixed weights from one
seeded generator, so a seed always gives the same cases):

- ``valid``: a fresh, correct update from an enrolled site (the first one per
  site counts, later ones are a second update in the round), or a valid twin state;
- ``replay``: the exact bytes of an earlier case sent again;
- ``truncated``: a valid envelope cut at a random byte;
- ``bit_flip``: 1-16 random bits of a valid envelope flipped;
- ``type_swap``: one value of the header or payload replaced by a value of
  another type; half of them re-signed by the site, so they pass the
  signature and meet the schema checks;
- ``nesting``: arrays nested 17 to 5000 deep spliced into the header;
- ``extreme_number``: n_samples, round, created, a metric or an int8 scale set
  to 2**63, 2**53 + 1, -1, 0, 1e308, 10**40 or a 5000-digit literal (signed where
  canonical JSON can carry it, raw text where it cannot);
- ``wrong_signer``: an outsider's key under an enrolled name, another enrolled
  site's update on this site's topic, an unenrolled site, another federation;
- ``wrong_kind``: a twin state, a round or a receipt envelope on ``updates/``;
- ``header_lie``: the prefix's header length or the body description wrong;
- ``random_bytes``: noise, with or without the ``FTLE`` magic;
- ``twin_junk``: the same mutations of a twin state on ``twins/{site}/state``;
- ``oversize``: an envelope prefix and noise past the cloud's ``max_update_bytes``.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ftlct.protocol import exchange
from ftlct.protocol.envelope import canonical_json, seal
from ftlct.protocol.identity import Identity, public_b64_of
from ftlct.protocol.messages import RoundAnnouncement
from ftlct.protocol.receipt import Receipt
from ftlct.protocol.topics import Topics
from ftlct.protocol.twin_state import TwinState
from tests.support.envelope_mutations import EnvelopeMutator, pack, resign, split

FAMILIES = {
    "valid": 6,
    "replay": 6,
    "truncated": 10,
    "bit_flip": 12,
    "type_swap": 14,
    "nesting": 6,
    "extreme_number": 12,
    "wrong_signer": 8,
    "wrong_kind": 4,
    "header_lie": 6,
    "random_bytes": 6,
    "twin_junk": 10,
    "oversize": 1,
}
NUMBER_PATHS = (
    ("payload", "n_samples"),
    ("payload", "round"),
    ("created",),
    ("payload", "metrics", "loss"),
    ("payload", "codec_params", "scales", "dense.0.weight"),
)


@dataclass(frozen=True)
class FuzzCase:
    family: str
    topic: str
    payload: bytes
    retained: bool = False


def draw_cases(fuzzer, families: dict[str, int], count: int, first: str) -> Iterator[FuzzCase]:
    """``count`` cases, each of a family drawn by weight with ``fuzzer.rng`` and made by
    ``fuzzer._<family>()``, kept in ``fuzzer.sent`` (a replay before anything was sent
    becomes ``first``)."""
    names = list(families)
    weights = [families[n] for n in names]
    for _ in range(count):
        family = fuzzer.rng.choices(names, weights)[0]
        if family == "replay" and not fuzzer.sent:
            family = first
        case = getattr(fuzzer, f"_{family}")()
        fuzzer.sent.append(case)
        yield case


def new_identity(name: str) -> Identity:
    private = Ed25519PrivateKey.generate()
    return Identity(name, private, public_b64_of(private))


class EnvelopeFuzzer:
    """Cases against a cloud of ``federation`` whose enrolled sites are ``sites``."""

    def __init__(
        self,
        federation: str,
        sites: list[Identity],
        seed: int = 0,
        base: str = "v0",
        max_update_bytes: int = 200_000,
    ):
        self.max_update_bytes = max_update_bytes
        self.federation = federation
        self.topics = Topics(federation)
        self.sites = sites
        self.base = base
        self.rng = random.Random(seed)
        self.mutate = EnvelopeMutator(self.rng)
        self.outsider = new_identity(sites[0].name)  # an enrolled name, another key
        self.stranger = new_identity("stranger")  # never enrolled
        self.cloud_impostor = new_identity("cloud")
        self.sent: list[FuzzCase] = []

    # ------------------------------------------------------------ valid material
    def update(self, site: Identity, **overrides) -> bytes:
        rng = self.rng
        args = dict(
            round=1,
            base_version=self.base,
            cluster="global",
            n_samples=rng.randint(1, 500),
            delta={
                "dense.0.weight": np.asarray(
                    [[rng.uniform(-1, 1) for _ in range(4)] for _ in range(2)], np.float32
                ),
                "dense.0.bias": np.asarray([rng.uniform(-1, 1) for _ in range(2)], np.float32),
            },
            metrics={"loss": rng.uniform(0, 2)},
            codec=rng.choice(["fp32", "fp16", "int8"]),
            update_id=f"fz{rng.getrandbits(64):016x}",  # fixed bytes for a fixed seed
            created=1_700_000_000.0 + len(self.sent),
        )
        args.update(overrides)
        return exchange.build_update(site, self.federation, **args)

    def twin(self, site: Identity) -> bytes:
        state = TwinState(status=self.rng.choice(["idle", "receiving", "inferring"]), outbox=1)
        created = 1_700_000_000.0 + len(self.sent)  # fixed bytes for a fixed seed
        return seal("twin_state", self.federation, state.to_json(), site, created=created)

    def _site(self) -> Identity:
        return self.rng.choice(self.sites)

    def _on_updates(self, family: str, site: Identity, payload: bytes) -> FuzzCase:
        return FuzzCase(family, self.topics.updates(site.name), payload)

    # ------------------------------------------------------------ families
    def cases(self, count: int) -> Iterator[FuzzCase]:
        return draw_cases(self, FAMILIES, count, first="valid")

    def _valid(self) -> FuzzCase:
        site = self._site()
        if self.rng.random() < 0.25:
            return FuzzCase("valid", self.topics.twin_state(site.name), self.twin(site))
        return self._on_updates("valid", site, self.update(site))

    def _replay(self) -> FuzzCase:
        earlier = self.rng.choice(self.sent)
        return FuzzCase("replay", earlier.topic, earlier.payload, earlier.retained)

    def _truncated(self) -> FuzzCase:
        site = self._site()
        return self._on_updates("truncated", site, self.mutate.truncate(self.update(site)))

    def _bit_flip(self) -> FuzzCase:
        site = self._site()
        return self._on_updates("bit_flip", site, self.mutate.flip_bits(self.update(site)))

    def _type_swap(self) -> FuzzCase:
        site = self._site()
        signer = site if self.rng.random() < 0.5 else None
        return self._on_updates(
            "type_swap", site, self.mutate.swap_value(self.update(site), signer)
        )

    def _nesting(self) -> FuzzCase:
        site = self._site()
        return self._on_updates("nesting", site, self.mutate.nest(self.update(site)))

    def _extreme_number(self) -> FuzzCase:
        site = self._site()
        data = self.update(site, codec="int8")
        if self.rng.random() < 0.2:  # beyond what canonical JSON (or any float) can carry
            return self._on_updates("extreme_number", site, self.mutate.literal(data))
        path = self.rng.choice(NUMBER_PATHS)
        return self._on_updates("extreme_number", site, self.mutate.set_number(data, path, site))

    def _wrong_signer(self) -> FuzzCase:
        victim = self._site()
        choice = self.rng.randrange(4)
        if choice == 0:  # an outsider signing under the first site's name
            victim = self.sites[0]
            return self._on_updates("wrong_signer", victim, self.update(self.outsider))
        if choice == 1:  # another enrolled site's (valid) update on the victim's topic
            other = self.rng.choice([s for s in self.sites if s is not victim] or self.sites)
            return self._on_updates("wrong_signer", victim, self.update(other))
        if choice == 2:  # a site nobody enrolled, on its own topic
            return FuzzCase(
                "wrong_signer", self.topics.updates(self.stranger.name), self.update(self.stranger)
            )
        data = exchange.build_update(
            victim, "other-fed", round=1, base_version=self.base, cluster="global",
            n_samples=1, delta={"dense.0.weight": np.zeros((2, 4), np.float32),
                                "dense.0.bias": np.zeros(2, np.float32)},
        )  # fmt: skip
        return self._on_updates("wrong_signer", victim, data)

    def _wrong_kind(self) -> FuzzCase:
        site = self._site()
        choice = self.rng.randrange(3)
        if choice == 0:
            data = self.twin(site)
        elif choice == 1:
            announcement = RoundAnnouncement(1, "fedavg", 1e10, 0.0, {"global": self.base})
            data = exchange.build_round(site, self.federation, announcement)
        else:
            receipt = Receipt(site.name, "u-12345678", 1, "accepted")
            data = seal("receipt", self.federation, receipt.to_payload(), self.cloud_impostor)
        return self._on_updates("wrong_kind", site, data)

    def _header_lie(self) -> FuzzCase:
        site = self._site()
        data = self.update(site)
        header, body = split(data)
        choice = self.rng.randrange(3)
        if choice == 0:  # the prefix's header length is wrong
            lie = self.mutate.lie_about_length(data)
        elif choice == 1:  # the body is not the one described (the signature still holds)
            lie = pack(canonical_json(header), body[: len(body) // 2])
        else:  # a described body that is not safetensors, signed
            junk = self.rng.randbytes(64)
            digest = hashlib.sha256(junk).hexdigest()
            header["body"] = {"bytes": len(junk), "codec": "safetensors", "sha256": digest}
            lie = resign(site, header, junk)
        return self._on_updates("header_lie", site, lie)

    def _random_bytes(self) -> FuzzCase:
        site = self._site()
        noise = self.rng.randbytes(self.rng.randrange(0, 600))
        if self.rng.random() < 0.5:
            noise = b"FTLE" + struct.pack(">I", self.rng.randrange(0, 700)) + noise
        if not noise:
            noise = b"\x00"  # an empty payload is a cleared retained message, not a case
        return self._on_updates("random_bytes", site, noise)

    def _oversize(self) -> FuzzCase:
        site = self._site()
        size = self.max_update_bytes + self.rng.randrange(1, 50_000)
        noise = self.rng.randbytes(size)
        return self._on_updates("oversize", site, b"FTLE" + struct.pack(">I", 100) + noise)

    def _twin_junk(self) -> FuzzCase:
        site = self._site()
        data = self.twin(site)
        choice = self.rng.randrange(4)
        if choice == 0:
            junk = self.mutate.truncate(data) or b"\x00"
        elif choice == 1:
            junk = self.mutate.swap_value(data, site)
        elif choice == 2:
            junk = self.mutate.nest(data)
        else:  # another site's valid twin on this site's topic
            junk = self.twin(self.rng.choice([s for s in self.sites if s is not site] or [site]))
        topic = self.topics.twin_state(site.name)
        return FuzzCase("twin_junk", topic, junk, self.rng.random() < 0.5)
