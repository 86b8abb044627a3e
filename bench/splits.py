"""The global test split and the non-IID partition of the rest over the sites.

Both work on *groups* (a patient, a source paper, or one file when no group is
given): a group is never cut, so near-duplicate slices of one patient cannot
sit on both sides of the test split, nor on two sites.

- ``holdout_split``: stratified by the group's majority class, a seeded shuffle of
  each class's groups, and a group joins the test side when that brings the
  class's test count closer to ``fraction`` of the class (each class with two
  or more groups gets at least one test group).
- ``dirichlet_partition``: label skew as in Hsu et al. 2019 (arXiv 1909.06335):
  for each class, site shares ``p ~ Dirichlet(alpha)``; groups of that class go,
  largest first, to the site furthest below its share. A draw that leaves a site
  with fewer than ``min_items`` images is redrawn (deterministically), as
  NIID-Bench does, so no site is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SplitError(ValueError):
    """The data cannot be split as asked (too few groups for the sites, bad fraction)."""


@dataclass(frozen=True)
class Partition:
    test: np.ndarray  # dataset indices no site ever trains on
    sites: tuple[np.ndarray, ...]  # dataset indices each site trains on

    @property
    def train(self) -> np.ndarray:
        return np.sort(np.concatenate(self.sites)) if self.sites else np.zeros(0, np.int64)


def _groups_of(indices: np.ndarray, labels: np.ndarray, groups: tuple[str, ...], n_classes: int):
    """``{group: (members, majority class)}`` over ``indices``, in sorted group order."""
    members: dict[str, list[int]] = {}
    for i in indices:
        members.setdefault(groups[i], []).append(int(i))
    table = {}
    for name in sorted(members):
        items = np.array(members[name], dtype=np.int64)
        table[name] = (items, int(np.bincount(labels[items], minlength=n_classes).argmax()))
    return table


def holdout_split(
    labels: np.ndarray, groups: tuple[str, ...], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)``: stratified, group-aware, seeded."""
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"test fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1
    table = _groups_of(np.arange(len(labels)), labels, groups, n_classes)
    target = fraction * np.bincount(labels, minlength=n_classes)
    taken = np.zeros(n_classes)
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for cls in range(n_classes):
        names = [g for g, (_, major) in table.items() if major == cls]
        for position, index in enumerate(rng.permutation(len(names))):
            items, _ = table[names[index]]
            first = position == 0 and len(names) >= 2
            if first or taken[cls] + len(items) / 2 < target[cls]:
                test.extend(items.tolist())
                taken += np.bincount(labels[items], minlength=n_classes)
    test_idx = np.sort(np.array(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    if len(train_idx) == 0:
        raise SplitError("the test split took every group; nothing is left to train on")
    return train_idx, test_idx


def default_min_items(n_train: int, n_sites: int) -> int:
    """At least 10 images per site, fewer only when the data are too small for that."""
    return max(2, min(10, n_train // (2 * n_sites)))


def dirichlet_partition(
    indices: np.ndarray,
    labels: np.ndarray,
    groups: tuple[str, ...],
    n_sites: int,
    alpha: float,
    seed: int,
    min_items: int | None = None,
    attempts: int = 200,
) -> tuple[np.ndarray, ...]:
    """Site -> dataset indices: Dirichlet(``alpha``) label skew over whole groups."""
    if n_sites < 1:
        raise SplitError(f"need at least one site, got {n_sites}")
    if alpha <= 0:
        raise SplitError(f"alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1
    table = _groups_of(np.asarray(indices), labels, groups, n_classes)
    if len(table) < n_sites:
        raise SplitError(f"{len(table)} training groups cannot fill {n_sites} sites")
    min_items = default_min_items(len(indices), n_sites) if min_items is None else min_items
    best: list[list[int]] | None = None
    for attempt in range(attempts):
        rng = np.random.default_rng([seed, attempt])
        assigned: list[list[int]] = [[] for _ in range(n_sites)]
        for cls in range(n_classes):
            names = [g for g, (_, major) in table.items() if major == cls]
            if not names:
                continue
            share = rng.dirichlet(np.full(n_sites, alpha))
            target = share * sum(len(table[g][0]) for g in names)
            have = np.zeros(n_sites)
            tie = rng.permutation(len(names))  # random order among groups of one size
            for _, name in sorted(
                zip(tie, names, strict=True), key=lambda t: (-len(table[t[1]][0]), t[0])
            ):
                site = int(np.argmax(target - have))
                assigned[site].extend(table[name][0].tolist())
                have[site] += len(table[name][0])
        sizes = [len(a) for a in assigned]
        if best is None or min(sizes) > min(len(a) for a in best):
            best = assigned
        if min(sizes) >= min_items:
            break
    if best is None or min(len(a) for a in best) == 0:
        raise SplitError(f"could not give each of {n_sites} sites some images (alpha {alpha})")
    return tuple(np.sort(np.array(a, dtype=np.int64)) for a in best)


def make_partition(
    labels: np.ndarray,
    groups: tuple[str, ...],
    n_sites: int,
    alpha: float,
    test_fraction: float,
    seed: int,
) -> Partition:
    """The test split, then the Dirichlet partition of what is left."""
    train_idx, test_idx = holdout_split(labels, groups, test_fraction, seed)
    sites = dirichlet_partition(train_idx, labels, groups, n_sites, alpha, seed)
    return Partition(test=test_idx, sites=sites)
