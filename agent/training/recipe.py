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

A closed-form federation (the cloud's ``closed_form`` strategy) announces
``update_kind = "statistics"``, its ``solver`` and ``shrinkage`` and
``max_embedding_norm``: the site then sends the sufficient statistics of its
labelled embeddings instead of training (``training.closed_form``), each
embedding clipped to that norm (the bound the cloud checks). These always
apply: they say what the cloud can take, not how to train; a value of the
wrong type there falls back to the default.

A standardised FTL federation (``ftl`` with ``standardise``) first announces
``update_kind = "moments"`` (the site sends the per-dimension sums of its
labelled embeddings, each clipped to ``max_embedding_norm``), then, in every
gradient round, the fleet's ``feature_mean`` and ``feature_std``: the site
trains its head on embeddings standardised by them. Like the update kind
they say how the federation's updates are made, so they apply whatever
``follow_round`` says; a malformed pair (not two equally long lists of finite
numbers, a std not above 0) is refused, since training without them would
send a delta that no longer fits the round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ftlct.agent.settings import TrainingSettings
from ftlct.export.closed_form_head import SOLVERS
from ftlct.protocol.codecs import CODECS
from ftlct.protocol.messages import MAX_STANDARDISED_DIM, UPDATE_KINDS


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
    update_kind: str = "delta"  # or "statistics" (a closed-form federation)
    solver: str = "discriminant"  # statistics: how the cloud solves the head
    shrinkage: float = 0.5
    # statistics and moments: each embedding clipped to this L2 norm before summing (the cloud's
    # bound, lowered to privacy.statistics_clip_norm with DP on: then it is the sensitivity's C)
    embedding_clip: float | None = None
    # a standardised FTL federation's gradient rounds: train on (x - mean) / std
    feature_mean: tuple[float, ...] | None = None
    feature_std: tuple[float, ...] | None = None

    @property
    def standardisation(self):
        """``(mean, std)`` as float32 arrays, or None."""
        if self.feature_mean is None or self.feature_std is None:
            return None
        return np.asarray(self.feature_mean, np.float32), np.asarray(self.feature_std, np.float32)


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
    kind = announced.get("update_kind", "delta")
    solver = announced.get("solver")
    shrinkage = announced.get("shrinkage")
    clip = announced.get("max_embedding_norm")
    mean, std = standardisation_of(announced)
    return Recipe(
        epochs=int(values["epochs"]),
        lr=float(values["lr"]),
        batch_size=int(values["batch_size"]),
        fedprox_mu=float(values["fedprox_mu"]),
        codec=str(values["codec"]),
        max_delta_norm=float(bound) if _positive(bound) else None,
        update_kind=kind if kind in UPDATE_KINDS else "delta",
        solver=solver if solver in SOLVERS else "discriminant",
        shrinkage=float(shrinkage) if _positive(shrinkage) else 0.5,
        embedding_clip=float(clip) if _positive(clip) else None,
        feature_mean=mean,
        feature_std=std,
    )


def standardisation_of(
    announced: dict,
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The announced ``(feature_mean, feature_std)``, ``(None, None)`` if neither is there;
    ``RecipeRefused`` if they are malformed."""
    mean, std = announced.get("feature_mean"), announced.get("feature_std")
    if mean is None and std is None:
        return None, None
    for key, value in (("feature_mean", mean), ("feature_std", std)):
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_STANDARDISED_DIM:
            raise RecipeRefused(f"{key} must be a list of 1..{MAX_STANDARDISED_DIM} numbers")
        if not all(_number(v) for v in value):
            raise RecipeRefused(f"{key} holds a value that is not a finite number")
    if len(mean) != len(std):
        raise RecipeRefused(f"feature_mean has {len(mean)} values, feature_std {len(std)}")
    if not all(v > 0 for v in std):
        raise RecipeRefused("feature_std holds a value that is not above 0")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
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
