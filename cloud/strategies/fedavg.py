"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the site deltas, per cluster.

The mean moves the cluster's model through a server optimizer
(``server_optimizer.py``): by default ``global += server_lr * mean`` (plain
FedAvg at ``server_lr`` 1); ``server_momentum`` gives FedAvgM and
``server_optimizer="adam"`` FedAdam, their buffers kept in ``state.extra``.

Streaming: one running weighted sum per cluster, so memory is O(clusters x
model) however many sites answer, and ``updates`` may be a lazy sequence that
decodes one update at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftlct.cloud.strategies.base import FederationState, SiteUpdate, Strategy
from ftlct.cloud.strategies.server_optimizer import server_optimizer
from ftlct.cloud.strategies.strategy_utils import WeightedSum, check_updates


class FedAvg(Strategy):
    """``global_c += server_lr * sum(n_i * delta_i) / sum(n_i)`` over the sites of cluster c.

    Keyword parameters (``server_lr``, ``server_momentum``, ``server_optimizer``,
    ``server_beta2``, ``server_tau``) choose the server optimizer.
    """

    name = "fedavg"

    def __init__(self, **server):
        self.server = server_optimizer(**server)

    def aggregate(self, state: FederationState, updates: Sequence[SiteUpdate]) -> FederationState:
        sums: dict[str, WeightedSum] = {}
        participants: dict[str, str] = {}
        for update in check_updates(state, updates, self.check_update):
            sums.setdefault(update.cluster, WeightedSum()).add(update.delta, update.n_samples)
            participants[update.site] = update.cluster
        means = {cluster: running.mean() for cluster, running in sums.items()}
        return self.server.advance(state, means, participants)
