"""``ftl-bench federation``: FTL vs FedAvg vs CFL (and the central/local references) on one split.

Every method sees the same partition, the same scanner profiles, the same
preprocessing (input size, windows) and the same seed:

- ``ftl``: frozen ImageNet backbone (``backbone.onnx`` of a model directory
  built by ``ftl-export``'s ``build_model_dir``), embeddings from onnxruntime
  as the agent computes them, head trained with the agent's ``train_head``,
  aggregated by the cloud's ``ftl`` strategy.
- ``ftl_closed_form``: the same embeddings; each site sends head statistics
  once and the cloud's ``closed_form`` strategy solves the head (one round).
- ``fedavg`` / ``cfl``: conventional FL from the same ImageNet backbone: its
  last stages (``finetune.first_block`` on) and a head, trained end to end over
  cached outputs of the frozen stages before them, the cloud's ``fedavg`` /
  ``cfl`` strategies.
- ``fedavg_cnn`` / ``cfl_cnn``: the whole ``SmallCnn`` from random init.
- ``central``: the FTL model trained on the pooled training views.
- ``local``: the FTL model trained by each site alone, metrics averaged over sites.

The test images never reach a site's training set: ``check_no_leak`` verifies
it on the arrays actually handed to the learners, before any training.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.agent.training.local_training import ArrayDataset
from ftlct.bench.augment import acquisition_jitter, flip_and_shift
from ftlct.bench.dataset import LabelledImages, load_dataset
from ftlct.bench.federation import MethodRun, SiteData, run_federated, run_independent
from ftlct.bench.learners import (
    FinetuneLearner,
    HeadLearner,
    Learner,
    NetworkLearner,
    warm_up,
)
from ftlct.bench.scanners import AugmentedScanner, ScannerProfile, site_profiles
from ftlct.bench.settings import STRATEGY_OF, BenchSettings
from ftlct.bench.splits import Partition, SplitError, holdout_split, make_partition
from ftlct.bench.views import ViewStore
from ftlct.export.model_dir import ModelDir
from ftlct.export.preprocessing import PreprocessingSpec, parse_windows


class LeakError(AssertionError):
    """A test image (or its group) reached a site's training data."""


@dataclass
class Plan:
    """Everything fixed before training: data, split, scanners, model."""

    dataset: LabelledImages
    partition: Partition
    profiles: tuple[ScannerProfile | AugmentedScanner, ...]  # sites first, then jittered views
    model: ModelDir
    store: ViewStore
    site_names: list[str]
    jitter_views: int = 0
    # per site: its images held out to score global versions (cloud/model_selection.py)
    selection: tuple[np.ndarray, ...] = ()
    # per site: views through its AdaBN-adapted backbone (bench/site_adaptation.py), if any
    site_stores: tuple[ViewStore, ...] = ()

    def store_for(self, kind: str, site: int) -> ViewStore:
        """Embeddings come from the site's adapted backbone when there is one."""
        return self.site_stores[site] if kind == "embedding" and self.site_stores else self.store

    def training_rows(self, site: int) -> np.ndarray:
        if not self.selection:
            return self.partition.sites[site]
        return np.setdiff1d(self.partition.sites[site], self.selection[site])

    def jitter_profile(self, site: int, draw: int) -> int:
        """Index in ``profiles`` of site ``site``'s jittered view number ``draw``."""
        return len(self.site_names) + site * self.jitter_views + draw


class Reporter:
    """Progress callbacks (the CLI shows rich bars; tests pass nothing)."""

    def stage(self, name: str, total: int) -> Callable[[], None]:
        return lambda: None

    def note(self, text: str) -> None:
        """A one-line status message."""


# --------------------------------------------------------------------------- plan


def preprocessing_spec(settings: BenchSettings) -> PreprocessingSpec:
    spec = PreprocessingSpec(input_size=settings.input_size)
    kwargs = {}
    if settings.windows:
        kwargs["windows"] = parse_windows(settings.windows)
    if settings.grey_windows:
        kwargs["grey_windows"] = parse_windows(settings.grey_windows)
    if kwargs:
        spec = PreprocessingSpec(input_size=settings.input_size, **kwargs)
    return spec


def model_dir(settings: BenchSettings, classes: tuple[str, ...], cache: Path) -> ModelDir:
    """The FTL model directory (ImageNet backbone, untrained head), built once per configuration."""
    from ftlct.export.build import build_model_dir
    from ftlct.export.harmonise import Harmonisation
    from ftlct.export.weights import resolve_weights

    ftl = settings.ftl
    weights = resolve_weights(None, ftl.backbone)
    spec = preprocessing_spec(settings)
    taps = tuple(int(t) for t in ftl.taps.split(",")) if ftl.taps else None
    pooling = tuple(ftl.pooling.split("+")) if ftl.pooling else None
    harmonisation = Harmonisation(ftl.blur_sigma, ftl.standardise)
    # a linear head starts at zero whatever the seed: every split shares one model directory
    head_seed = settings.seed if ftl.head != "linear" else 0
    key = hashlib.sha256(
        json.dumps(
            [
                *(str(weights), list(classes), spec.to_json(), ftl.head, head_seed),
                *(ftl.backbone, list(taps or ()), list(pooling or ())),
                harmonisation.to_json(),
            ]
        ).encode()
    ).hexdigest()[:12]
    path = cache / f"model-{key}"
    if (path / "manifest.json").is_file():
        model = ModelDir.load(path)
        # a directory cached before builds mapped the batch norms cannot be adapted: rebuild
        if not model.problems() and "batch_norm" in model.manifest["backbone"]:
            return model
    return build_model_dir(
        path,
        weights,
        list(classes),
        settings.input_size,
        ftl.head,
        spec,
        settings.seed,
        backbone=ftl.backbone,
        taps=taps,
        pooling=pooling,
        harmonisation=harmonisation,
    )


def make_plan(settings: BenchSettings, reporter: Reporter) -> Plan:
    dataset = load_dataset(settings.data)
    partition = make_partition(
        dataset.labels,
        dataset.groups,
        settings.sites,
        settings.alpha,
        settings.test_fraction,
        settings.seed,
    )
    check_no_leak(dataset, partition)
    cache = Path(settings.cache_dir or Path(settings.out) / "cache")
    cache.mkdir(parents=True, exist_ok=True)
    reporter.note(f"building the model directory (ImageNet {settings.ftl.backbone} -> ONNX)")
    model = model_dir(settings, dataset.classes, cache)
    scanners = site_profiles(settings.sites, settings.scanners)
    k = settings.ftl.jitter_views
    profiles = scanners + tuple(AugmentedScanner(p, draw) for p in scanners for draw in range(k))
    store = ViewStore(cache, dataset, model, profiles, settings.threads)
    names = [f"site-{i}" for i in range(settings.sites)]
    selection = selection_holdout(dataset, partition, settings.selection_fraction, settings.seed)
    return Plan(dataset, partition, profiles, model, store, names, k, selection)


def selection_holdout(
    dataset: LabelledImages, partition: Partition, fraction: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Each site's held-out images (stratified, whole groups); none where the site is too small."""
    if fraction <= 0:
        return ()
    held = []
    for site, rows in enumerate(partition.sites):
        groups = tuple(dataset.groups[i] for i in rows)
        try:
            _, val = holdout_split(dataset.labels[rows], groups, fraction, seed * 1000 + site)
        except SplitError:
            val = np.zeros(0, dtype=np.int64)
        held.append(np.sort(rows[val]) if len(val) < len(rows) else np.zeros(0, np.int64))
    return tuple(held)


def check_no_leak(dataset: LabelledImages, partition: Partition) -> None:
    """No test index, file or group in any site's training set."""
    test = set(partition.test.tolist())
    test_files = {dataset.paths[i] for i in test}
    test_groups = {dataset.groups[i] for i in test}
    for site, indices in enumerate(partition.sites):
        shared = test & set(indices.tolist())
        files = test_files & {dataset.paths[i] for i in indices}
        groups = test_groups & {dataset.groups[i] for i in indices}
        if shared or files or groups:
            raise LeakError(
                f"site {site} trains on {len(shared)} test images, {len(files)} test files, "
                f"{len(groups)} test groups"
            )
    seen: set[int] = set()
    for indices in partition.sites:
        overlap = seen & set(indices.tolist())
        if overlap:
            raise LeakError(f"{len(overlap)} images are on two sites")
        seen |= set(indices.tolist())


# --------------------------------------------------------------------------- methods


def _learner(method: str, settings: BenchSettings, plan: Plan) -> Learner:
    n_classes = len(plan.dataset.classes)
    if method in ("fedavg_cnn", "cfl_cnn"):
        augment = flip_and_shift
        if settings.network.jitter:
            spec = plan.model.preprocessing
            augment = acquisition_jitter(spec.mean, spec.std, then=flip_and_shift)
        config = settings.network.config(settings.val_fraction, settings.seed, augment)
        return NetworkLearner(config, n_classes, settings.seed)
    if method in ("fedavg", "cfl"):
        from safetensors.numpy import load_file

        from ftlct.bench.models import suffix_frozen
        from ftlct.export.heads import head_to_arrays, make_head

        first = settings.finetune.first_block
        frozen = suffix_frozen(load_file(str(plan.model.path / "backbone.safetensors")), first)
        head = head_to_arrays(make_head("linear", n_classes, 1280))  # on features.18, mean
        config = settings.finetune.config(settings.val_fraction, settings.seed)
        return FinetuneLearner(config, n_classes, head, frozen, first, 1 + plan.jitter_views)
    config = settings.ftl.config(settings.val_fraction, settings.seed)
    return HeadLearner(config, n_classes, plan.model.head_weights())


def _sites(plan: Plan, kind: str) -> list[SiteData]:
    """Each site's training arrays (its views, plus jittered ones unless raw inputs), its test
    views and the views of its held-out selection images (its own scanner)."""
    labels = plan.dataset.labels
    jitter = plan.jitter_views if kind != "input" else 0
    sites = []
    for s, name in enumerate(plan.site_names):
        rows = plan.training_rows(s)
        profiles = [s] + [plan.jitter_profile(s, k) for k in range(jitter)]
        store = plan.store_for(kind, s)  # the site's adapted backbone, with AdaBN
        inputs = np.concatenate([store.get(kind, p, rows) for p in profiles])
        all_rows = np.tile(rows, len(profiles))
        held = plan.selection[s] if plan.selection else np.zeros(0, np.int64)
        sites.append(
            SiteData(
                name,
                ArrayDataset(inputs, labels[all_rows]),
                store.get(kind, s, plan.partition.test),
                train_rows=all_rows,
                val=ArrayDataset(store.get(kind, s, held), labels[held]) if len(held) else None,
            )
        )
    return sites


def _extraction_seconds(plan: Plan, kind: str) -> list[float]:
    """Per site: the onnxruntime time its own training views took (0 for raw inputs)."""
    if kind == "input":
        return [0.0] * len(plan.site_names)
    return [
        sum(
            plan.store_for(kind, s).seconds(kind, p, plan.training_rows(s))
            for p in [s] + [plan.jitter_profile(s, k) for k in range(plan.jitter_views)]
        )
        for s in range(len(plan.site_names))
    ]


def _transport(method: str, settings: BenchSettings, plan: Plan, reporter: Reporter):
    """The cloud's strategy for ``method``: called in process, or ``ftl-cloud serve`` over MQTT."""
    from ftlct.cloud.strategies import make_strategy

    strategy_name = STRATEGY_OF[method]
    family = {"ftl": settings.ftl, "fedavg": settings.finetune, "cfl": settings.finetune}.get(
        method, settings.network
    )
    params = family.strategy_params() if method == "ftl" else family.server_params()
    params.update(settings.cfl.params() if strategy_name == "cfl" else {})
    if settings.transport == "mqtt":
        from ftlct.bench.mqtt_transport import MqttTransport

        # a head over the model directory's backbone, or every tensor of a network
        kind = "head" if strategy_name == "ftl" else "network"
        return MqttTransport(method, strategy_name, params, settings, plan, reporter, kind)
    from ftlct.bench.inproc_transport import InProcessTransport

    return InProcessTransport(make_strategy(strategy_name, **params))


def run_method(method: str, settings: BenchSettings, plan: Plan, reporter: Reporter) -> MethodRun:
    learner = _learner(method, settings, plan)
    sites = _sites(plan, learner.kind)
    check_arrays_disjoint(plan, sites)
    labels = plan.dataset.labels[plan.partition.test]
    extraction = _extraction_seconds(plan, learner.kind)
    n_models = 1 if method == "central" else len(sites)
    one_round = method == "ftl_closed_form"
    tick = reporter.stage(method, len(sites) if one_round else settings.rounds * n_models)
    if method == "ftl_closed_form":
        from ftlct.bench.closed_form_run import run_closed_form

        return run_closed_form(
            settings.closed_form, sites, labels, learner, start_s=max(extraction), tick=tick
        )
    if method in STRATEGY_OF:
        run = run_federated(
            method,
            learner,
            _transport(method, settings, plan, reporter),
            sites,
            labels,
            settings.rounds,
            settings.seed,
            start_s=max(extraction),
            tick=tick,
        )
        if "transport" not in run.extra:
            run.extra["transport"] = "in process (the cloud's strategy called directly)"
        return run
    central = method == "central"
    if central:  # one model on the pooled views, scored on every site's scanner
        train_sets = [
            ArrayDataset(
                np.concatenate([s.train.inputs for s in sites]),
                np.concatenate([s.train.labels for s in sites]),
            )
        ]
    else:  # local: each site alone, metrics averaged over sites
        train_sets = [s.train for s in sites]
    return run_independent(
        method,
        learner,
        train_sets,
        sites,
        [0] * len(sites) if central else list(range(len(sites))),
        labels,
        settings.rounds,
        settings.seed,
        average_sites=not central,
        start_s=sum(extraction) if central else max(extraction),
        tick=tick,
    )


def check_arrays_disjoint(plan: Plan, sites: list[SiteData]) -> None:
    """The rows behind the arrays handed to the learners share no image or group with the test split."""
    test_groups = {plan.dataset.groups[i] for i in plan.partition.test}
    for site in sites:
        rows = site.train_rows
        if rows is None or len(rows) != len(site.train):
            raise LeakError(f"{site.name}: training arrays do not say which images they hold")
        if np.intersect1d(rows, plan.partition.test).size:
            raise LeakError(f"{site.name}: training rows include test images")
        if test_groups & {plan.dataset.groups[i] for i in rows}:
            raise LeakError(f"{site.name}: training rows share a group with the test split")


def view_kinds(settings: BenchSettings) -> list[str]:
    methods = settings.method_list()
    kinds = []
    if any(m in methods for m in ("ftl", "ftl_closed_form", "central", "local")):
        kinds.append("embedding")
    if any(m in methods for m in ("fedavg", "cfl")):
        kinds.append(f"prefix{settings.finetune.first_block}")
    if any(m in methods for m in ("fedavg_cnn", "cfl_cnn")):
        kinds.append("input")
    return kinds


def prepare_views(settings: BenchSettings, plan: Plan, reporter: Reporter) -> None:
    """Each site's training images and every test image, through each site's scanner, once."""
    wanted = {
        s: np.union1d(plan.partition.sites[s], plan.partition.test) for s in range(settings.sites)
    }
    kinds = view_kinds(settings)
    _ensure(plan, kinds, wanted, reporter, "views")
    feature_kinds = [k for k in kinds if k != "input"]
    if plan.jitter_views and feature_kinds:
        jittered = {
            plan.jitter_profile(s, k): plan.training_rows(s)
            for s in range(settings.sites)
            for k in range(plan.jitter_views)
        }
        _ensure(plan, feature_kinds, jittered, reporter, "jittered views")
    if settings.ftl.adabn != "none" and "embedding" in kinds:
        from ftlct.bench.site_adaptation import adapt_sites

        plan.site_stores = adapt_sites(settings, plan, reporter, _ensure)


def _ensure(
    plan: Plan, kinds: list[str], wanted: dict, reporter: Reporter, stage: str, store=None
) -> None:
    store = store or plan.store
    if not store.missing(kinds, wanted):
        return
    tick = reporter.stage(stage, sum(len(v) for v in wanted.values()))

    def advance(count: int) -> None:
        for _ in range(count):
            tick()

    store.ensure(kinds, wanted, advance)


@dataclass
class Experiment:
    results: dict  # results.json
    split: dict  # split.json: test files and each site's training files


def run_experiment(settings: BenchSettings, reporter: Reporter | None = None) -> Experiment:
    """Run every requested method; returns the documents the CLI writes."""
    from ftlct.bench.results import results_document, split_document

    reporter = reporter or Reporter()
    settings.check()
    started = time.perf_counter()
    _set_threads(settings.threads)
    plan = make_plan(settings, reporter)
    prepare_views(settings, plan, reporter)
    warm_up(len(plan.dataset.classes))
    runs: dict[str, MethodRun] = {}
    for method in settings.method_list():
        rounds = 1 if method == "ftl_closed_form" else settings.rounds
        reporter.note(f"{method}: {rounds} round{'s' if rounds > 1 else ''}")
        runs[method] = run_method(method, settings, plan, reporter)
    results = results_document(settings, plan, runs, time.perf_counter() - started)
    return Experiment(results, split_document(plan))


def _set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
