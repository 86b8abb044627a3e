"""FTL: federated transfer learning of the head over a frozen, shared pretrained backbone.

Every site runs the same ImageNet backbone (its sha256 is pinned in the global
model) and trains only the classification head, so the federated state is the
head tensors ``dense.{i}.weight/bias`` and aggregation is FedAvg over them.
Anything else in an update (a backbone tensor, say) is refused: it would mean
a site fine-tuned a part that must stay frozen.
"""

from __future__ import annotations

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, UpdateMismatch
from ftlct.cloud.strategies.fedavg import FedAvg
from ftlct.protocol.messages import HEAD_TENSOR  # what a head is, on the wire and here


class FTL(FedAvg):
    name = "ftl"

    def check_update(self, state: FederationState, update: SiteUpdate) -> None:
        foreign = sorted(name for name in update.delta if not HEAD_TENSOR.match(name))
        if foreign:
            raise UpdateMismatch(
                "shape_mismatch",
                f"update from {update.site}: FTL federates head tensors dense.* only, got {foreign}",
            )
        super().check_update(state, update)
