"""``ftl_closed_form``: one round in which sites send head statistics and the cloud solves the head.

Every site computes ``site_statistics`` over its training embeddings (its
scanner's and the jittered views, as FTL trains on), optionally clipped and
noised (``closed_form.dp_clip`` / ``dp_noise``); the cloud's ``closed_form``
strategy sums them and solves. Time is the slowest site's statistics plus
the solve, after the same embedding extraction FTL pays. Bytes are those of
the real signed ``site_update`` envelope carrying the statistics.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

import numpy as np

from ftlct.bench.federation import (
    EnvelopeMeter,
    MethodRun,
    RoundRecord,
    SiteData,
    _score_models,
    validation_score,
)
from ftlct.bench.learners import Learner
from ftlct.cloud.strategies import DEFAULT_CLUSTER, FederationState, SiteUpdate, make_strategy
from ftlct.export.closed_form_head import privatise, rho_of_release, site_statistics


def run_closed_form(
    settings,
    sites: Sequence[SiteData],
    test_labels: np.ndarray,
    learner: Learner,
    start_s: float = 0.0,
    tick=None,
) -> MethodRun:
    """One statistics round over ``sites``; ``settings`` is ``BenchSettings.closed_form``."""
    strategy = make_strategy("closed_form", **settings.params())
    state = FederationState(models={DEFAULT_CLUSTER: learner.initial()})
    n_classes = learner.n_classes
    dp = settings.dp_clip > 0
    rng = np.random.default_rng(secrets.randbits(128))
    updates, seconds = [], []
    for site in sites:
        started = time.perf_counter()
        stats = site_statistics(
            site.train.inputs, site.train.labels, n_classes, settings.dp_clip if dp else None
        )
        if dp:
            stats = privatise(stats, settings.dp_clip, settings.dp_noise, rng)
        updates.append(SiteUpdate(site.name, stats.to_arrays(), len(site.train)))
        seconds.append(time.perf_counter() - started)
        if tick:
            tick()
    started = time.perf_counter()
    state = strategy.aggregate(state, updates)
    elapsed = start_s + max(seconds) + (time.perf_counter() - started)
    models = {s.name: (DEFAULT_CLUSTER, state.models[DEFAULT_CLUSTER]) for s in sites}
    final, per_site = _score_models(learner, models, sites, test_labels)
    score = validation_score(learner, models, sites)
    size = EnvelopeMeter(kind="statistics").size(updates[0], 1, {})
    extra = {
        "strategy": strategy.name,
        "solver": settings.solver,
        "shrinkage": settings.shrinkage,
        "statistics_tensors": {k: list(v.shape) for k, v in updates[0].delta.items()},
        "privacy": (
            {
                "dp_clip": settings.dp_clip,
                "noise_multiplier": settings.dp_noise,
                "rho_per_slice": rho_of_release(settings.dp_noise),
                "unit": "one labelled slice (view), one release",
            }
            if dp
            else "none: the statistics are released exactly"
        ),
    }
    history = [RoundRecord(1, final.f1, final.accuracy, elapsed, 1, (), score)]
    run = MethodRun("ftl_closed_form", history, final, per_site, size, start_s, extra)
    run.best_validated, run.best_round = final, 1
    return run
