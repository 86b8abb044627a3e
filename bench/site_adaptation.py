"""AdaBN in the benchmark: each site adapts the backbone's batch norms to its own scanner.

Site ``s`` re-estimates the statistics (``ftlct.export.adabn``) on its own
training images as its scanner delivers them (no labels are needed; with
``ftl.adabn_balanced`` the images are drawn evenly over the labels it has,
``adabn_per_class`` each, so a site holding mostly one class does not
normalise that class's look away), writes its adapted model directory, and
from then on embeds everything it sees with it: its training views (its
scanner and the jittered copies), its held-out images and the test images
through its scanner. ``early`` adapts stages up to ``ftl.adabn_up_to`` only.
Adapted directories and their views are cached like the shared ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ftlct.bench.views import CHUNK, ViewStore
from ftlct.export.adabn import adapt_model_dir, balanced_sample, estimate
from ftlct.export.model_dir import ModelDir


def site_images(settings, plan, site: int) -> np.ndarray:
    """The images site ``site`` estimates its statistics on."""
    rows = plan.training_rows(site)
    if not settings.ftl.adabn_balanced:
        return rows
    picked = balanced_sample(
        plan.dataset.labels[rows], settings.ftl.adabn_per_class, plan_seed(settings, site)
    )
    return rows[picked]


def plan_seed(settings, site: int) -> int:
    return settings.seed * 1000 + site


def adapted_model(settings, plan, site: int, cache: Path) -> ModelDir:
    ftl = settings.ftl
    images = site_images(settings, plan, site)
    up_to = ftl.adabn_up_to if ftl.adabn == "early" else None
    key = hashlib.sha256(
        json.dumps(
            [plan.model.backbone_sha256, plan.profiles[site].to_json(), images.tolist(), up_to]
        ).encode()
    ).hexdigest()[:16]
    path = cache / f"adabn-{key}"
    if (path / "manifest.json").is_file():
        model = ModelDir.load(path)
        if not model.problems():
            return model
    batches = (
        plan.store.model_inputs(site, images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)
    )
    stats = estimate(plan.model, batches, up_to_stage=up_to, threads=settings.threads)
    record = {
        "n_images": len(images),
        "sampling": (
            f"balanced, up to {ftl.adabn_per_class} per label" if ftl.adabn_balanced else "all"
        ),
        "scanner": plan.profiles[site].name,
    }
    return adapt_model_dir(plan.model, path, stats, record)


def adapt_sites(settings, plan, reporter, ensure) -> tuple[ViewStore, ...]:
    """Every site's adapted model, and its embedding views computed (cached) with
    ``ensure(plan, kinds, wanted, reporter, stage, store)`` (the experiment's)."""
    cache = Path(settings.cache_dir or Path(settings.out) / "cache")
    stores = []
    for site in range(len(plan.site_names)):
        reporter.note(f"AdaBN: {plan.site_names[site]} adapts to its scanner")
        model = adapted_model(settings, plan, site, cache)
        store = ViewStore(cache, plan.dataset, model, plan.profiles, settings.threads)
        rows = plan.training_rows(site)
        held = plan.selection[site] if plan.selection else np.zeros(0, np.int64)
        wanted = {site: np.union1d(np.union1d(rows, held), plan.partition.test)}
        wanted.update({plan.jitter_profile(site, k): rows for k in range(plan.jitter_views)})
        ensure(plan, ["embedding"], wanted, reporter, f"AdaBN views {plan.site_names[site]}", store)
        stores.append(store)
    return tuple(stores)
