"""``make_strategy(name, **params)``: the one place that maps names to strategy classes."""

from __future__ import annotations

from ftlct.cloud.strategies.base import Strategy
from ftlct.cloud.strategies.cfl import CFL
from ftlct.cloud.strategies.closed_form import ClosedForm
from ftlct.cloud.strategies.fedavg import FedAvg
from ftlct.cloud.strategies.ftl import FTL
from ftlct.cloud.strategies.median import CoordinateMedian
from ftlct.cloud.strategies.norm_clipping import NormClipping
from ftlct.cloud.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    "ftl": FTL,
    "fedavg": FedAvg,
    "cfl": CFL,
    "closed_form": ClosedForm,  # updates carry statistics, not deltas
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "norm_clipping": NormClipping,
}


def make_strategy(name: str, **params) -> Strategy:
    """A strategy by name. ``clip_norm=X`` wraps any of them in norm clipping.

    ``norm_clipping`` alone takes ``max_norm`` and an optional ``inner`` name
    (default ``fedavg``). Unknown names or parameters raise ``ValueError``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    clip_norm = params.pop("clip_norm", None)
    try:
        if name == "norm_clipping":
            inner_name = params.pop("inner", "fedavg")
            max_norm = params.pop("max_norm", clip_norm)
            if max_norm is None:
                raise ValueError("norm_clipping needs max_norm")
            return NormClipping(float(max_norm), make_strategy(inner_name, **params))
        strategy = STRATEGIES[name](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for strategy {name!r}: {exc}") from exc
    if clip_norm is not None:
        if strategy.update_kind != "delta":
            raise ValueError(f"clip_norm clips deltas; {name} takes {strategy.update_kind}")
        strategy = NormClipping(float(clip_norm), strategy)
    return strategy
