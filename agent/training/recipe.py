"""What one local round trains with: ``[training]`` settings, overridden by the round's recipe.

The cloud announces a recipe in ``rounds/current`` (``local_epochs``, ``lr``,
``batch_size``, ``codec``, optionally ``fedprox_mu``, and ``max_delta_norm``,
the bound it enforces). With ``training.follow_round`` (the default) the
announced values win, so every site of a round trains alike. The announcement
is signed, but a bug or a compromised cloud must not make a site train for a
week or exhaust its memory: the values trained with are bounded by
``training.max_local_epochs``, ``max_batch_size``, ``min_lr``/``max_lr`` and
``max_fedprox_mu``, and a round whose recipe falls outside them (or names a
value of the wrong type, or a codec this agent does not know) is refused with
the reason (``RecipeRefused``), never trained on silently clamped values: a
site that trained on other values than its round asked for would send an
update that no longer fits the round. ``max_delta_norm`` always applies: a
longer delta would only be refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftlct.agent.settings import TrainingSettings
from ftlct.protocol.codecs import CODECS


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# announced key -> (our field, type check)
_ANNOUNCED = {
    "local_epochs": ("epochs", _integer),
    "lr": ("lr", _number),
    "batch_size": ("batch_size", _integer),
    "fedprox_mu": ("fedprox_mu", _number),
    "codec": ("codec", lambda v: v in CODECS),
}


class RecipeRefused(ValueError):
    """The round's recipe is outside this site's bounds; the message says which value."""


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    batch_size: int
    fedprox_mu: float
    codec: str
    max_delta_norm: float | None  # the cloud's bound on the delta's L2 norm


def recipe_for(settings: TrainingSettings, announced: dict) -> Recipe:
    """The recipe to train with; ``RecipeRefused`` when the round asks for what this site
    does not do."""
    values = {
        "epochs": settings.epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "fedprox_mu": settings.fedprox_mu,
        "codec": settings.codec,
    }
    if settings.follow_round:
        for key, (name, ok) in _ANNOUNCED.items():
            if key not in announced:
                continue
            if not ok(announced[key]):
                raise RecipeRefused(f"{key} {announced[key]!r} is not a valid value")
            values[name] = announced[key]
    check_bounds(settings, values)
    bound = announced.get("max_delta_norm")
    valid_bound = _number(bound) and bound > 0
    return Recipe(
        epochs=int(values["epochs"]),
        lr=float(values["lr"]),
        batch_size=int(values["batch_size"]),
        fedprox_mu=float(values["fedprox_mu"]),
        codec=str(values["codec"]),
        max_delta_norm=float(bound) if valid_bound else None,
    )


def check_bounds(settings: TrainingSettings, values: dict) -> None:
    s = settings
    limits = [
        ("local_epochs", values["epochs"], 0, s.max_local_epochs, "max_local_epochs"),
        ("batch_size", values["batch_size"], 1, s.max_batch_size, "max_batch_size"),
        ("lr", values["lr"], s.min_lr, s.max_lr, "min_lr/max_lr"),
        ("fedprox_mu", values["fedprox_mu"], 0.0, s.max_fedprox_mu, "max_fedprox_mu"),
    ]
    for key, value, low, high, setting in limits:
        if not low <= value <= high:
            raise RecipeRefused(
                f"{key} {value:g} is outside [{low:g}, {high:g}] (training.{setting})"
            )
