"""What global models a site accepts: the kind, its pin (backbone or network layout) and labels."""

from __future__ import annotations

from dataclasses import dataclass

from ftlct.protocol.exchange import open_global_model
from ftlct.protocol.messages import GlobalModel


@dataclass(frozen=True)
class ModelPin:
    kind: str  # "head" (an agent: its backbone pinned) | "network" (the bench's whole networks)
    labels: list[str]
    backbone_sha256: str | None = None  # head
    architecture_sha256: str | None = None  # network

    def open(self, payload: bytes, cloud_key: str, federation: str) -> GlobalModel:
        """Verify a ``model/{cluster}`` payload (signature, body hash, kind, pin, labels);
        ``ProtocolError`` with the reason if it is not a model this site may use."""
        return open_global_model(
            payload,
            cloud_key,
            federation,
            kind=self.kind,
            backbone_sha256=self.backbone_sha256,
            architecture_sha256=self.architecture_sha256,
            labels=self.labels,
        )
