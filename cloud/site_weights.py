"""How much each update may weigh in its round: no single site steers a cluster's model.

FedAvg weights a site by the sample count it claims, and a claim is only a
number in a signed message: one enrolled site claiming 10**12 samples would
set the global head to its own delta. So the cloud bounds the weights it
hands to the strategy, per cluster and round:

1. ``min(n_samples, max_samples)``: no claim counts beyond the setting;
2. no site above ``max_share`` of its cluster's total weight. The largest
   weights are lowered to a common cap ``c`` with ``c = max_share * sum_i
   min(w_i, c)``, solved exactly (water-filling); the others keep theirs, so
   every share is at most ``max_share`` and the order of the weights is kept.
   With fewer than ``1 / max_share`` sites no weighting can meet the bound;
   then every site weighs the same (the fairest split there is).

Shares, not directions: ``max_delta_norm`` bounds how far one delta can
point, and ``median`` / ``trimmed_mean`` resist a minority of arbitrary deltas.
"""

from __future__ import annotations


def bounded_weights(claims: dict[str, int], max_samples: int, max_share: float) -> dict[str, float]:
    """site -> aggregation weight for the updates of one cluster in one round."""
    if max_samples < 1 or not 0.0 < max_share <= 1.0:
        raise ValueError("max_samples must be >= 1 and max_share in (0, 1]")
    weights = {site: float(min(n, max_samples)) for site, n in claims.items()}
    if len(weights) < 2 or max_share >= 1.0:
        return weights
    if len(weights) * max_share < 1.0:
        return dict.fromkeys(weights, 1.0)
    ordered = sorted(weights.values(), reverse=True)
    total = sum(ordered)
    if ordered[0] <= max_share * total:
        return weights
    # cap the m largest at c: c = max_share * (m * c + rest)  =>  c = s * rest / (1 - s * m)
    rest = total
    for m in range(1, len(ordered)):
        rest -= ordered[m - 1]
        cap = max_share * rest / (1.0 - max_share * m)
        if ordered[m] <= cap:
            return {site: min(w, cap) for site, w in weights.items()}
    return dict.fromkeys(weights, 1.0)  # pragma: no cover - unreachable when k * s >= 1
