"""A closed-form round: the sufficient statistics of the site's labelled embeddings, not a delta.

    statistics_round(recipe, n_classes, train) -> (statistics, n_samples, metrics, own head)

The cloud's ``closed_form`` strategy sums every site's statistics (the Gram
matrix's upper triangle, per-class sums and counts) and solves the head
exactly: the head one site holding every site's slices would get
(``export/closed_form_head.py``). The held-out series stay out of the
statistics as they stay out of training, so the gate and the validation
report judge on slices no head was fitted on. Each embedding is clipped to
the recipe's ``embedding_clip`` (the cloud's bound; with DP on, the
sensitivity's C); DP noise is added at release (``sync.update_release``).
"""

from __future__ import annotations

import numpy as np

from ftlct.agent.training.labelled_data import LabelledData
from ftlct.agent.training.recipe import Recipe
from ftlct.export.closed_form_head import StatisticsError, site_statistics, solve_head
from ftlct.export.tensors import Weights


def statistics_round(
    recipe: Recipe, n_classes: int, train: LabelledData
) -> tuple[Weights, int, dict[str, float], Weights | None]:
    """``(statistics tensors, n_samples, metrics, the site's own solved head or None)``.

    The site's own head (its statistics alone, the cloud's solver) is only for
    the local validation metrics; a site holding one class has none.
    """
    vectors = np.asarray(train.vectors, np.float64)
    stats = site_statistics(vectors, train.labels, n_classes, clip_norm=recipe.embedding_clip)
    metrics = {"n_train": float(len(train))}
    if recipe.embedding_clip is not None and len(vectors):
        norms = np.linalg.norm(vectors, axis=1)
        metrics["n_clipped"] = float(np.count_nonzero(norms > recipe.embedding_clip))
    try:
        own = solve_head(stats, recipe.solver, recipe.shrinkage)
    except StatisticsError:
        own = None
    return stats.to_arrays(), len(train), metrics, own
