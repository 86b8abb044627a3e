"""Clustered FL after Sattler, Müller, Samek (2019, arXiv:1910.01991; IEEE TNNLS 2021).

Sites whose data disagree (e.g. conflicting labels) pull a shared model in
opposite directions. CFL notices this once a cluster's model is near a
stationary point of the joint objective: the weighted mean update is short
(``||mean delta|| < eps1``) while some site still moves far (``max ||delta_i||
> eps2``). Then it bipartitions the cluster by the cosine similarity of the
site updates and gives each part its own model; parts may split again later
(recursive), so there is one global model per leaf cluster.

Parameters (all configurable through ``make_strategy("cfl", ...)``):

- ``eps1``: split only when the cluster's weighted mean update norm is below it.
- ``eps2``: split only when the largest site update norm is above it.
  Both are in the units of the deltas (they depend on learning rate, local
  steps, model size); the paper's 0.4 / 1.6 are for its models.
- ``split_check_after``: from this many completed rounds on, the ``eps1``
  condition is waived. Small experiments may never come close enough to a
  stationary point to meet ``eps1``; this forces the similarity check.
  ``None`` (default) never waives it.
- ``max_cross_similarity``: a split is made only if the largest cosine
  similarity between the two parts is below this. Stands in for the paper's
  ``gamma_max < sqrt((1 - alpha_cross_max) / 2)`` test, whose noise level is
  unknown in practice; the default 0.0 splits only groups whose updates do
  not point the same way, so clients from one distribution stay together.
- ``min_cluster_size``: both parts need at least this many sites.
- ``server_lr``, ``server_momentum``, ``server_optimizer``...: the server
  optimizer each cluster's model moves with (``server_optimizer.py``).

The bipartition is the exact minimiser of the largest cross-part similarity
(``argmin_{c1, c2} max_{i in c1, j in c2} alpha_ij``): with distance
``-alpha`` this is the maximum-spacing 2-clustering, which single linkage
(Kruskal's algorithm stopped at two components) finds exactly.

Deltas of one cluster are held in memory together (O(sites x model)): the
similarity matrix needs them all. Members of a split cluster that sent no
update this round join the part with more sites (not more claimed samples:
a claim is only a number); a site never seen before trains from the cluster
with the most members (``cluster_of``). The means weigh sites by
``n_samples`` as the cloud hands them over, bounded (``cloud/site_weights.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.server_optimizer import load_slots, server_optimizer, store_slots
from ftlct.cloud.strategies.strategy_utils import (
    WeightedSum,
    check_updates,
    cosine_similarity_matrix,
    flatten,
    group_by_cluster,
    l2_norm,
    next_state,
)


def max_spacing_bipartition(similarity: np.ndarray) -> tuple[list[int], list[int]]:
    """Split indices in two so that the largest cross-part similarity is minimal."""
    n = similarity.shape[0]
    if n < 2:
        raise ValueError("cannot bipartition fewer than two sites")
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges = sorted(
        ((similarity[i, j], i, j) for i in range(n) for j in range(i + 1, n)),
        key=lambda e: (-e[0], e[1], e[2]),
    )
    components = n
    for _, i, j in edges:
        if components == 2:
            break
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
            components -= 1
    first = root(0)
    part_a = [i for i in range(n) if root(i) == first]
    part_b = [i for i in range(n) if root(i) != first]
    return part_a, part_b


class CFL(Strategy):
    name = "cfl"

    def __init__(
        self,
        eps1: float = 0.4,
        eps2: float = 1.6,
        split_check_after: int | None = None,
        max_cross_similarity: float = 0.0,
        min_cluster_size: int = 1,
        **server,
    ):
        if eps1 < 0 or eps2 < 0:
            raise ValueError("eps1 and eps2 must be >= 0")
        if min_cluster_size < 1:
            raise ValueError("min_cluster_size must be >= 1")
        if not -1.0 <= max_cross_similarity <= 1.0:
            raise ValueError("max_cross_similarity must be in [-1, 1]")
        self.eps1 = eps1
        self.eps2 = eps2
        self.split_check_after = split_check_after
        self.max_cross_similarity = max_cross_similarity
        self.min_cluster_size = min_cluster_size
        self.server = server_optimizer(**server)  # see server_optimizer.py

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        groups = group_by_cluster(check_updates(state, updates, self.check_update))
        models = dict(state.models)
        slots = {}  # cluster -> its server optimizer's buffers after this round
        assigned: dict[str, str] = {}  # site -> cluster after this round
        splits = []
        for cluster, members in sorted(groups.items()):
            found = self._split(state, cluster, members)
            if found is None:
                models[cluster], slots[cluster] = self.server.step(
                    state.models[cluster], _mean(members), load_slots(state.extra, cluster)
                )
                assigned.update({u.site: cluster for u in members})
                continue
            parts, cross = found
            children = [f"{cluster}.0", f"{cluster}.1"]
            del models[cluster]
            for child, part in zip(children, parts, strict=True):
                # a new cluster starts with empty buffers (see server_optimizer.py)
                models[child], slots[child] = self.server.step(
                    state.models[cluster], _mean(part), {}
                )
                assigned.update({u.site: child for u in part})
            # by sites, not by claimed samples: a site claiming a huge n must not pull
            # the cluster's absent members into its own part
            bigger = children[0] if len(parts[0]) >= len(parts[1]) else children[1]
            for site, current in state.membership.items():
                if current == cluster and site not in assigned:  # sat this round out
                    assigned[site] = bigger
            splits.append(
                {
                    "round": state.round + 1,
                    "parent": cluster,
                    "children": {
                        child: sorted(u.site for u in part)
                        for child, part in zip(children, parts, strict=True)
                    },
                    "cross_similarity": round(float(cross), 6),
                }
            )
        new = next_state(state, models, assigned)
        store_slots(new.extra, slots, set(models))
        if splits:
            new.extra.setdefault("splits", []).extend(splits)
        return new

    def _split(self, state: FederationState, cluster: str, members: list[SiteUpdate]):
        """``((part_a, part_b), cross_similarity)`` if the cluster should split now, else None."""
        if len(members) < max(2, 2 * self.min_cluster_size):
            return None
        running = WeightedSum()
        for update in members:
            running.add(update.delta, update.n_samples)
        mean_norm = l2_norm(running.mean())
        max_norm = max(l2_norm(u.delta) for u in members)
        forced = self.split_check_after is not None and state.round >= self.split_check_after
        if max_norm <= self.eps2 or (mean_norm >= self.eps1 and not forced):
            return None
        similarity = cosine_similarity_matrix([flatten(u.delta) for u in members])
        index_a, index_b = max_spacing_bipartition(similarity)
        cross = similarity[np.ix_(index_a, index_b)].max()
        if cross >= self.max_cross_similarity:
            return None
        if min(len(index_a), len(index_b)) < self.min_cluster_size:
            return None
        return ([members[i] for i in index_a], [members[i] for i in index_b]), cross


def _mean(members: list[SiteUpdate]):
    running = WeightedSum()
    for update in members:
        running.add(update.delta, update.n_samples)
    return running.mean()
