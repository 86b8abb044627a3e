"""Build and open each message kind: the functions agent and cloud call.

Site (agent) side::

    identity = load_or_create_identity(keys_dir, site)
    data = build_update(identity, federation, round=r, base_version=v, cluster=c,
                        n_samples=n, delta=delta, metrics={"loss": 0.3}, codec="int8")
    client.publish(Topics(federation).updates(site), data, qos=1)
    model = open_global_model(payload, cloud_public_key, federation,
                              backbone_sha256=my_backbone, labels=my_labels)
    announcement = open_round(payload, cloud_public_key, federation)
    client.will_set(topic, build_offline_will(identity, federation), qos=1, retain=True)
    client.publish(topic, build_twin_state(identity, federation, TwinState(...)), qos=1, retain=True)
    client.subscribe(Topics(federation).receipts(site), qos=1)
    receipt = open_receipt(payload, cloud_public_key, federation, site=site)
    # receipt.update_id / .round / .outcome ("accepted"|"duplicate"|"rejected") / .reason

Cloud side: ``build_global_model``, ``build_round``, ``build_receipt``, ``open_update``,
``open_twin_state``.
Every ``open_*`` verifies the signature before trusting anything in the payload.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ftlct.protocol.codecs import decode_delta, encode_delta
from ftlct.protocol.envelope import Envelope, open_envelope, seal
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.identity import Identity
from ftlct.protocol.messages import (
    STATISTICS_CODEC,
    GlobalModel,
    RoundAnnouncement,
    UpdateMessage,
    body_to_tensors,
    check_update_tensors,
    tensors_to_body,
    update_fields,
)
from ftlct.protocol.receipt import Receipt
from ftlct.protocol.twin_state import TwinState, validate_twin_state

CLOUD_SIGNER = "cloud"

KeyLookup = Callable[[str], str | None]  # site -> enrolled public key (base64), None if unknown


def new_update_id() -> str:
    return uuid.uuid4().hex


# ----------------------------------------------------------------- site side
def build_update(
    identity: Identity,
    federation: str,
    *,
    round: int,
    base_version: str,
    cluster: str,
    n_samples: int,
    delta: dict[str, np.ndarray],
    metrics: dict[str, float] | None = None,
    codec: str = "fp32",
    update_id: str | None = None,
    created: float | None = None,
    kind: str = "delta",
) -> bytes:
    """A signed ``site_update`` envelope. Resend the same bytes to resend the same update.

    ``created`` (default: now) is the envelope's time; a fixed one makes the bytes reproducible.
    ``kind="statistics"``: ``delta`` holds a closed-form federation's statistics
    (``messages.STATISTICS_TENSORS``), ``kind="moments"`` a standardised FTL
    federation's feature moments (``messages.MOMENTS_TENSORS``); both are sent
    fp32 whatever ``codec`` says.
    """
    if kind != "delta":
        codec = STATISTICS_CODEC
    message = UpdateMessage(
        site=identity.name,
        round=round,
        base_version=base_version,
        cluster=cluster,
        n_samples=n_samples,
        delta=delta,
        update_id=update_id or new_update_id(),
        codec=codec,
        metrics=dict(metrics or {}),
        public_key=identity.public_b64,
        kind=kind,
    )
    tensors, params = encode_delta(delta, codec)
    payload = message.to_payload(params)
    update_fields(payload)  # refuse to send what the cloud would refuse as malformed
    check_update_tensors(kind, tensors)
    return seal("site_update", federation, payload, identity, tensors_to_body(tensors), created)


def open_global_model(
    data: bytes,
    cloud_public_key: str,
    federation: str,
    *,
    kind: str = "head",
    backbone_sha256: str | None = None,
    labels: list[str] | None = None,
    architecture_sha256: str | None = None,
) -> GlobalModel:
    """A verified global model of ``kind`` (default: a head, what the agent installs).

    Reasons: bad_signature, wrong_federation, kind_mismatch (a whole network
    where a head is expected, or the reverse), backbone_mismatch,
    architecture_mismatch, labels_mismatch, malformed, oversize.
    """
    envelope = _open_signed(data, "global_model", federation, lambda _: cloud_public_key)
    model = GlobalModel.from_payload(envelope.payload, body_to_tensors(envelope.body))
    if model.weights_sha256 != _body_sha256(envelope):
        raise ProtocolError("malformed", "weights_sha256 does not match the body")
    if model.kind != kind:
        raise ProtocolError(
            "kind_mismatch",
            f"global model {model.version} is a {_KIND_NAMES[model.kind]}, "
            f"this site federates a {_KIND_NAMES.get(kind, kind)}",
        )
    if backbone_sha256 is not None and model.backbone_sha256 != backbone_sha256:
        raise ProtocolError(
            "backbone_mismatch",
            f"global model {model.version} is for backbone {model.backbone_sha256[:12]}, "
            f"this site runs {backbone_sha256[:12]}",
        )
    if architecture_sha256 is not None and model.architecture_sha256 != architecture_sha256:
        raise ProtocolError(
            "architecture_mismatch",
            f"global model {model.version} has tensor layout {model.architecture_sha256[:12]}, "
            f"this site's network has {architecture_sha256[:12]}",
        )
    if labels is not None and list(labels) != model.labels:
        raise ProtocolError("labels_mismatch", f"global labels {model.labels} != {list(labels)}")
    return model


_KIND_NAMES = {"head": "head over a pinned backbone", "network": "whole network"}


def open_round(data: bytes, cloud_public_key: str, federation: str) -> RoundAnnouncement:
    envelope = _open_signed(data, "round", federation, lambda _: cloud_public_key)
    return RoundAnnouncement.from_payload(envelope.payload)


def open_receipt(
    data: bytes, cloud_public_key: str, federation: str, site: str | None = None
) -> Receipt:
    """The cloud's verified verdict on one of ``site``'s updates (``protocol/receipt.py``).

    Reasons: bad_signature, wrong_federation, wrong_site (a receipt for
    another site), malformed, oversize, wrong_kind.
    """
    envelope = _open_signed(data, "receipt", federation, lambda _: cloud_public_key)
    receipt = Receipt.from_payload(envelope.payload)
    if site is not None and receipt.site != site:
        raise ProtocolError("wrong_site", f"a receipt for {receipt.site}, this site is {site}")
    return receipt


def build_twin_state(identity: Identity, federation: str, state: TwinState | dict) -> bytes:
    """A signed, schema-checked twin state (``ProtocolError('bad_twin_state')`` if not allowed)."""
    checked = validate_twin_state(state.to_json() if isinstance(state, TwinState) else state)
    return seal("twin_state", federation, checked.to_json(), identity)


def build_offline_will(identity: Identity, federation: str, model_version: str = "") -> bytes:
    """The last will to register at connect: the twin says "offline" if the agent vanishes."""
    return build_twin_state(
        identity, federation, TwinState(status="offline", model_version=model_version)
    )


# ----------------------------------------------------------------- cloud side
def build_global_model(identity: Identity, federation: str, model: GlobalModel) -> bytes:
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in model.weights.items()}
    body = tensors_to_body(weights)
    payload = model.to_payload(hashlib.sha256(body).hexdigest())
    return seal("global_model", federation, payload, identity, body)


def build_round(identity: Identity, federation: str, announcement: RoundAnnouncement) -> bytes:
    return seal("round", federation, announcement.to_payload(), identity)


def build_receipt(identity: Identity, federation: str, receipt: Receipt) -> bytes:
    """A signed ``receipt`` for ``Topics(federation).receipts(receipt.site)`` (QoS 1, not retained)."""
    Receipt.from_payload(receipt.to_payload())  # never send what a site would refuse
    return seal("receipt", federation, receipt.to_payload(), identity)


def open_update(
    data: bytes,
    keys: KeyLookup,
    federation: str,
    max_bytes: int | None = None,
    trust_on_first_use: bool = False,
) -> UpdateMessage:
    """A verified, decoded site update (the round logic checks round, base, shapes, norm).

    Reasons: oversize, malformed, bad_dtype, wrong_kind, wrong_federation,
    unknown_site, bad_signature, wrong_sender. ``trust_on_first_use`` (DEV
    ONLY) verifies an unknown signer with the key it sent along; the caller
    then enrols it.
    """
    envelope = open_envelope(data, "site_update", max_bytes)
    public_key = keys(envelope.signer)
    if public_key is None and trust_on_first_use:
        offered = envelope.payload.get("public_key")
        public_key = offered if isinstance(offered, str) and offered else None
    envelope = _verified(envelope, public_key, federation)
    fields = update_fields(envelope.payload)
    if fields["site"] != envelope.signer:
        raise ProtocolError(
            "wrong_sender", f"update names site {fields['site']}, signed by {envelope.signer}"
        )
    tensors = body_to_tensors(envelope.body)
    check_update_tensors(fields["kind"], tensors)
    delta = decode_delta(tensors, fields["codec"], fields["codec_params"])
    fields["public_key"] = public_key
    return UpdateMessage(**fields, delta=delta, created=envelope.created, body=envelope.body)


@dataclass(frozen=True)
class TwinMessage:
    site: str
    state: TwinState
    created: float  # the agent's clock when it built the message


def open_twin_state(data: bytes, keys: KeyLookup, federation: str) -> TwinMessage:
    """A verified, schema-checked twin state."""
    envelope = _open_signed(data, "twin_state", federation, keys)
    return TwinMessage(envelope.signer, validate_twin_state(envelope.payload), envelope.created)


def peek(data: bytes) -> Envelope:
    """The envelope's header fields WITHOUT checking the signature (for logs and outboxes)."""
    return open_envelope(data)


def _open_signed(
    data: bytes, kind: str, federation: str, keys: KeyLookup, max_bytes: int | None = None
) -> Envelope:
    envelope = open_envelope(data, kind, max_bytes)
    return _verified(envelope, keys(envelope.signer), federation)


def _verified(envelope: Envelope, public_key: str | None, federation: str) -> Envelope:
    if public_key is None:
        raise ProtocolError(
            "unknown_site", f"{envelope.kind} signed by {envelope.signer}, who is not enrolled"
        )
    envelope.verify(public_key)
    if envelope.federation != federation:
        raise ProtocolError(
            "wrong_federation",
            f"{envelope.kind} for federation {envelope.federation}, expected {federation}",
        )
    return envelope


def _body_sha256(envelope: Envelope) -> str:
    return hashlib.sha256(envelope.body).hexdigest()
