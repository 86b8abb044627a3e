"""FTL: federated transfer learning of the head over a frozen, shared pretrained backbone.

Every site runs the same ImageNet backbone (its sha256 is pinned in the global
model) and trains only the classification head, so the federated state is the
head tensors ``dense.{i}.weight/bias`` and aggregation is FedAvg over them.
Anything else in an update (a backbone tensor, say) is refused: it would mean
a site fine-tuned a part that must stay frozen.

With ``standardise`` the federation's first round is a *moments* round: each
site sends the per-dimension sums of its labelled embeddings
(``export/feature_moments.py``), the cloud adds them into the fleet's mean and
std and keeps them in ``state.extra``; the head does not move. Every later
round announces them (``feature_mean``, ``feature_std``) and sites train the
head on standardised embeddings, sending deltas of the raw-space head as
before (the map is the same linear one at every site, so the FedAvg of raw
deltas is the FedAvg of standardised ones). The moments are checked like
closed-form statistics: every embedding clipped to ``max_embedding_norm``,
so a trace or a sum no set of clipped embeddings could give is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, UpdateMismatch
from ftlct.cloud.strategies.fedavg import FedAvg
from ftlct.cloud.strategies.strategy_utils import (
    check_updates,
    copy_weights,
    dp_count_slack,
    next_state,
    open_sums,
)
from ftlct.export.feature_moments import FeatureMoments, MomentsError
from ftlct.protocol.messages import (  # what a head is, on the wire and here
    HEAD_TENSOR,
    MAX_STANDARDISED_DIM,
)

EXTRA_KEY = "feature_standardisation"  # in FederationState.extra: {"mean", "std", "slices"}
# the multi-layer embedding's norms are ~20-25 (max ~90 on covid-ct): a bound, not a clip
DEFAULT_MAX_EMBEDDING_NORM = 200.0


class FTL(FedAvg):
    """FedAvg over head tensors; ``standardise=True`` adds the moments round first.

    Keyword parameters: ``standardise``, ``max_embedding_norm`` and those of
    ``FedAvg`` (the server optimizer).
    """

    name = "ftl"

    def __init__(
        self,
        standardise: bool = False,
        max_embedding_norm: float = DEFAULT_MAX_EMBEDDING_NORM,
        **server,
    ):
        super().__init__(**server)
        if not isinstance(standardise, bool):
            raise ValueError(f"standardise must be true or false, got {standardise!r}")
        if not 0 < max_embedding_norm < 1e6:
            raise ValueError(f"max_embedding_norm must be in (0, 1e6), got {max_embedding_norm}")
        self.standardise = standardise
        self.max_embedding_norm = float(max_embedding_norm)

    def _wants_moments(self, state: FederationState | None) -> bool:
        return self.standardise and (state is None or EXTRA_KEY not in state.extra)

    def update_kind_for(self, state: FederationState | None) -> str:
        return "moments" if self._wants_moments(state) else "delta"

    def round_training(self, state: FederationState | None = None) -> dict:
        if self._wants_moments(state):
            return {"update_kind": "moments", "max_embedding_norm": self.max_embedding_norm}
        if not self.standardise:
            return {}
        known = state.extra[EXTRA_KEY]
        return {"feature_mean": list(known["mean"]), "feature_std": list(known["std"])}

    def start_probe(self, weights) -> SiteUpdate:
        if not self.standardise:
            return super().start_probe(weights)
        dim = int(np.shape(weights.get("dense.0.weight", np.zeros((0, 0))))[1])
        if dim > MAX_STANDARDISED_DIM:
            raise ValueError(
                f"standardise announces the mean and std of the head's {dim} inputs; at most "
                f"{MAX_STANDARDISED_DIM} fit a round announcement"
            )
        moments = FeatureMoments(np.zeros(dim), np.ones(dim), 1.0)
        return SiteUpdate("start-check", moments.to_arrays(), 1)

    def check_update(self, state: FederationState, update: SiteUpdate) -> None:
        if self._wants_moments(state):
            self._check_moments(state, update)
            return
        foreign = sorted(name for name in update.delta if not HEAD_TENSOR.match(name))
        if foreign:
            raise UpdateMismatch(
                "shape_mismatch",
                f"update from {update.site}: FTL federates head tensors dense.* only, got {foreign}",
            )
        super().check_update(state, update)

    def _check_moments(self, state: FederationState, update: SiteUpdate) -> None:
        moments = open_sums(state, update, FeatureMoments.from_arrays, MomentsError)
        head = state.models[update.cluster]
        dim = np.shape(head.get("dense.0.weight", np.zeros((0, 0))))[1]
        if moments.dim != dim:
            raise UpdateMismatch(
                "shape_mismatch",
                f"update from {update.site}: {moments.dim}-d moments, the head takes {dim}",
            )
        slack = float(dp_count_slack(moments.count))
        if not (moments.count >= 1.0 and 0 < update.n_samples <= moments.count + slack):
            raise UpdateMismatch(
                "bad_samples",
                f"update from {update.site}: n_samples {update.n_samples} but its moments "
                f"count {moments.count:.0f} slices",
            )
        bound = self.max_embedding_norm
        # sum_sq adds up the squared norms; no clipped slice adds more than bound^2 to it
        if float(moments.total_sq.sum()) > bound**2 * (moments.count + slack) or float(
            np.linalg.norm(moments.total)
        ) > bound * (moments.count + slack):
            raise UpdateMismatch(
                "norm_bound",
                f"update from {update.site}: its moments need embeddings longer than "
                f"max_embedding_norm {bound:g} for {moments.count:.0f} slices",
            )

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        if not self._wants_moments(state):
            return super().aggregate(state, updates)
        total: FeatureMoments | None = None
        participants: dict[str, str] = {}
        for update in check_updates(state, updates, self.check_update):
            moments = FeatureMoments.from_arrays(update.delta)
            if 0 < update.n_samples < moments.count:  # the cloud bounded the site's weight
                moments = moments.scaled(update.n_samples / moments.count)
            total = moments if total is None else total + moments
            participants[update.site] = update.cluster
        if total is None:
            raise ValueError("a moments round needs at least one update")
        try:
            mean, std = total.mean_std()
        except MomentsError as exc:
            raise ValueError(str(exc)) from exc
        models = {cluster: copy_weights(w) for cluster, w in state.models.items()}
        new = next_state(state, models, participants)
        new.extra[EXTRA_KEY] = {
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "slices": round(total.count, 3),
        }
        return new
