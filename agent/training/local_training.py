"""Local training: one site's round, starting from the global weights it was sent.

``train_module`` is the one training loop of the project. The agent fine-tunes
its head with it (``train_head``, on cached embeddings) and ``ftl-bench`` uses
the same loop for every method, including whole-network FedAvg/CFL, so the
benchmark measures the code that runs at the edge, not a second implementation.

What a round does, in order: load the global tensors into the module; split a
stratified local validation set off (``val_fraction``); train ``epochs``
passes with the configured optimizer, class-weighted cross-entropy and, when
``fedprox_mu > 0``, the FedProx proximal term ``mu/2 * ||w - w_global||^2``
(Li et al. 2020) that keeps non-IID sites near the global model; score the
validation split. Everything random (split, shuffling, augmentation, dropout)
draws from ``seed``, inside a forked RNG so the caller's torch RNG is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from ftlct.agent.settings import CLASS_WEIGHTING, OPTIMIZERS
from ftlct.export.heads import head_from_arrays
from ftlct.export.metrics import classification_metrics
from ftlct.export.tensors import Weights

# (batch of inputs, generator) -> augmented batch; called in training only.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TrainingError(ValueError):
    """Inputs that cannot be trained on (shapes, labels, weights that do not fit the module)."""


@dataclass(frozen=True)
class LocalTrainConfig:
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    # How the local class prior is handled: "logit_adjusted" adds log(n_c / n) to the
    # logits in the loss (see local_prior_logits), "balanced" reweights the loss by
    # n / (classes * n_c); the default since ftl-bench levers showed it on three splits
    class_weighting: str = "logit_adjusted"
    fedprox_mu: float = 0.0
    seed: int = 0
    val_fraction: float = 0.2
    head_dropout: float = 0.0  # between the layers of an mlp head (train_head only)
    augment: Augment | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.weight_decay < 0 or self.fedprox_mu < 0:
            raise ValueError("weight_decay and fedprox_mu must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.class_weighting not in CLASS_WEIGHTING:
            raise ValueError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTING)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")

    def to_json(self) -> dict:
        """The settings as JSON (the augmentation hook is code, not a setting)."""
        data = asdict(self)
        data.pop("augment")
        return data

    @classmethod
    def from_json(cls, data: dict) -> LocalTrainConfig:
        """From a settings table (TOML/JSON); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)} - {"augment"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class ArrayDataset:
    """``inputs [N, ...]`` (any float dtype; memmaps fine, batches become float32) and ``labels [N]``."""

    inputs: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.inputs):
            raise TrainingError(f"{len(self.inputs)} inputs but labels of shape {labels.shape}")
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
            raise TrainingError("labels must be non-negative integer class indices")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ModuleTrainResult:
    state: Weights  # the trained tensors, same names as the global state
    n_samples: int  # samples trained on (the validation split excluded)
    metrics: dict[str, float]


@dataclass
class LocalTrainResult:
    weights: Weights  # the local head, dense.{i}.weight/bias
    delta: Weights  # weights - global_weights
    n_samples: int
    metrics: dict[str, float]


# --------------------------------------------------------------------------- state <-> arrays


def state_arrays(module: nn.Module) -> Weights:
    """The module's floating-point state (parameters, BN statistics) as float32 numpy arrays.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are counters, not
    weights: they are not federated.
    """
    return {
        name: value.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, value in module.state_dict().items()
        if value.is_floating_point()
    }


def load_state_arrays(module: nn.Module, state: Weights) -> None:
    """Copy ``state`` into the module; every name must exist with the same shape."""
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise TrainingError(f"weights name tensors the model lacks: {unknown[:3]}")
    for name, value in state.items():
        if tuple(np.shape(value)) != tuple(own[name].shape):
            raise TrainingError(
                f"{name}: weights have shape {np.shape(value)}, model {tuple(own[name].shape)}"
            )
        if not np.isfinite(value).all():
            raise TrainingError(f"{name}: weights have non-finite values")
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    module.load_state_dict(tensors, strict=False)


# --------------------------------------------------------------------------- pieces of a round


def split_validation(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_indices, val_indices)``; every class keeps at least one training sample."""
    labels = np.asarray(labels)
    if fraction <= 0 or len(labels) < 2:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        take = min(round(len(members) * fraction), len(members) - 1)
        val.extend(members[:take].tolist())
    val_idx = np.sort(np.asarray(val, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    """Balanced weights ``n / (present_classes * n_c)``; a class the site lacks weighs 0."""
    if mode != "balanced":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def local_prior_logits(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """``log(n_c / n)`` per class, a very large negative number for classes the site lacks.

    Logit adjustment (Menon et al. 2021, "Long-tail learning via logit
    adjustment"; in FL: FedLC, Zhang et al. 2022): the loss scores ``logits +
    log prior``, so the head itself only has to model what is common to every
    site (the class-conditional part) while the site's own label mix is
    explained by the fixed offset. Under pure label skew every site's optimum
    is then the same head, which is what removes the drift FedAvg suffers from
    when sites hold mostly one class; a site with a single class has nothing
    to teach about the prior and, rightly, moves the head very little.
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    total = max(counts.sum(), 1.0)
    prior = np.where(counts > 0, np.log(np.maximum(counts, 1.0) / total), -1e4)
    return torch.tensor(prior, dtype=torch.float32)


def _optimizer(params: list[nn.Parameter], config: LocalTrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Shuffled, near-equal batches (never a lone last sample that BatchNorm cannot train on)."""
    order = torch.randperm(n, generator=generator).numpy()
    count = max(1, -(-n // batch_size))
    return [np.sort(chunk) for chunk in np.array_split(order, count) if len(chunk)]


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _batch_inputs(dataset: ArrayDataset, index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(dataset.inputs[index], dtype=np.float32))


@torch.no_grad()
def predict_logits(module: nn.Module, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits ``[N, C]`` for ``inputs`` (any float dtype), batch by batch."""
    module.eval()
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(np.asarray(inputs[start : start + batch_size], dtype=np.float32))
        outputs.append(module(batch).numpy())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


# --------------------------------------------------------------------------- the loop


def train_module(
    module: nn.Module,
    global_state: Weights,
    dataset: ArrayDataset,
    config: LocalTrainConfig,
    n_classes: int | None = None,
) -> ModuleTrainResult:
    """Train ``module`` from ``global_state`` on ``dataset``; returns the tensors named in ``global_state``.

    Parameters not named in ``global_state`` still train if they require
    gradients (they are local), but only the named tensors are returned; freeze
    what must stay fixed with ``requires_grad_(False)``. The module is changed
    in place.
    """
    started = time.perf_counter()
    labels = np.asarray(dataset.labels, dtype=np.int64)
    n_classes = n_classes or (int(labels.max()) + 1 if labels.size else 1)
    if labels.size and labels.max() >= n_classes:
        raise TrainingError(f"label {labels.max()} outside the {n_classes} classes")
    if len(dataset) == 0:
        raise TrainingError("no training samples")
    load_state_arrays(module, global_state)
    train_idx, val_idx = split_validation(labels, config.val_fraction, config.seed)
    weight = class_weights(labels[train_idx], n_classes, config.class_weighting)
    offset = None
    if config.class_weighting == "logit_adjusted":
        offset = local_prior_logits(labels[train_idx], n_classes)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    anchors = [
        (p, torch.as_tensor(np.asarray(global_state[n], dtype=np.float32)))
        for n, p in named
        if config.fedprox_mu > 0 and n in global_state
    ]
    skip_single = _has_batch_norm(module)
    losses: list[float] = []

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        optimizer = _optimizer([p for _, p in named], config) if named else None
        for _ in range(config.epochs if optimizer else 0):
            module.train()
            total, seen = 0.0, 0
            for batch in _batches(len(train_idx), config.batch_size, generator):
                if skip_single and len(batch) < 2:
                    continue
                index = train_idx[batch]
                inputs = _batch_inputs(dataset, index)
                if config.augment is not None:
                    inputs = config.augment(inputs, generator)
                target = torch.from_numpy(labels[index])
                logits = module(inputs)
                if offset is not None:
                    logits = logits + offset
                data_loss = nn.functional.cross_entropy(logits, target, weight=weight)
                loss = data_loss
                if anchors:
                    proximal = sum(torch.sum((p - p0) ** 2) for p, p0 in anchors)
                    loss = loss + 0.5 * config.fedprox_mu * proximal
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(data_loss.detach()) * len(index)
                seen += len(index)
            losses.append(total / seen if seen else float("nan"))

    metrics: dict[str, float] = {
        "epochs": float(config.epochs),
        "n_train": float(len(train_idx)),
        "n_val": float(len(val_idx)),
        "train_seconds": time.perf_counter() - started,
    }
    if losses:
        metrics["train_loss"] = losses[-1]
        metrics["train_loss_first_epoch"] = losses[0]
    if len(val_idx):
        predicted = predict_logits(module, dataset.inputs[val_idx]).argmax(axis=1)
        scored = classification_metrics(labels[val_idx], predicted, n_classes)
        metrics["val_accuracy"] = scored.accuracy
        metrics["val_f1"] = scored.f1
    state = state_arrays(module)
    return ModuleTrainResult({name: state[name] for name in global_state}, len(train_idx), metrics)


def train_head(
    global_weights: Weights,
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    config: LocalTrainConfig,
    standardise: tuple[np.ndarray, np.ndarray] | None = None,
) -> LocalTrainResult:
    """One local round of head training on cached embeddings ``[N, D]``: new weights and the delta.

    ``standardise = (mean, std)``, the federation's feature moments: the head is
    trained on ``(x - mean) / std`` (``export.feature_moments``) and returned,
    with its delta, as a head on the raw embedding.
    """
    if standardise is None:
        return _train_head(global_weights, embeddings, labels, n_classes, config)
    from ftlct.export import feature_moments as fm

    mean, std = standardise
    dim = np.shape(global_weights.get("dense.0.weight", np.zeros((0, 0))))[1]
    try:
        fm.check_standardisation(mean, std, dim)
    except fm.MomentsError as exc:
        raise TrainingError(str(exc)) from exc
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise TrainingError(
            f"embeddings of shape {embeddings.shape} do not fit a head taking {dim}"
        )
    inner = fm.standardised_head(global_weights, mean, std)
    result = _train_head(inner, fm.standardise(embeddings, mean, std), labels, n_classes, config)
    weights = fm.raw_head(result.weights, mean, std)
    delta = {
        name: (weights[name] - np.asarray(global_weights[name], dtype=np.float32))
        for name in global_weights
    }
    return LocalTrainResult(weights, delta, result.n_samples, result.metrics)


def _train_head(
    global_weights: Weights,
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    config: LocalTrainConfig,
) -> LocalTrainResult:
    try:
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init draws from the global RNG
            head = head_from_arrays(global_weights, dropout=config.head_dropout)
    except ValueError as exc:
        raise TrainingError(f"global head weights unusable: {exc}") from exc
    out_features = head.dense[-1].out_features
    if out_features != n_classes:
        raise TrainingError(f"head gives {out_features} classes, expected {n_classes}")
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] != head.dense[0].in_features:
        raise TrainingError(
            f"embeddings of shape {embeddings.shape} do not fit a head taking {head.dense[0].in_features}"
        )
    result = train_module(head, global_weights, ArrayDataset(embeddings, labels), config, n_classes)
    delta = {
        name: (result.state[name] - np.asarray(global_weights[name], dtype=np.float32))
        for name in global_weights
    }
    return LocalTrainResult(result.state, delta, result.n_samples, result.metrics)
