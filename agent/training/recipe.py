"""What one local round trains with: ``[training]`` settings, overridden by the round's recipe.

The cloud announces a recipe in ``rounds/current`` (``local_epochs``, ``lr``,
``batch_size``, ``codec``, optionally ``fedprox_mu``, and ``max_delta_norm``,
the bound it enforces). With ``training.follow_round`` (the default) the
announced values win, so every site of a round trains alike; values of the
wrong type are ignored. ``max_delta_norm`` always applies: a longer delta
would only be refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftlct.agent.settings import TrainingSettings
from ftlct.protocol.codecs import CODECS

# announced key -> (our field, type check)
_ANNOUNCED = {
    "local_epochs": ("epochs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "lr": ("lr", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0),
    "batch_size": (
        "batch_size",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    ),
    "fedprox_mu": (
        "fedprox_mu",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
    ),
    "codec": ("codec", lambda v: v in CODECS),
}


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    batch_size: int
    fedprox_mu: float
    codec: str
    max_delta_norm: float | None  # the cloud's bound on the delta's L2 norm


def recipe_for(settings: TrainingSettings, announced: dict) -> Recipe:
    values = {
        "epochs": settings.epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "fedprox_mu": settings.fedprox_mu,
        "codec": settings.codec,
    }
    if settings.follow_round:
        for key, (name, ok) in _ANNOUNCED.items():
            if key in announced and ok(announced[key]):
                values[name] = announced[key]
    bound = announced.get("max_delta_norm")
    valid_bound = (
        isinstance(bound, int | float)
        and not isinstance(bound, bool)
        and math.isfinite(bound)
        and bound > 0
    )
    return Recipe(
        epochs=int(values["epochs"]),
        lr=float(values["lr"]),
        batch_size=int(values["batch_size"]),
        fedprox_mu=float(values["fedprox_mu"]),
        codec=str(values["codec"]),
        max_delta_norm=float(bound) if valid_bound else None,
    )
