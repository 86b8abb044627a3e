"""Test split and site partition: group-aware, stratified, seeded, never overlapping."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.bench.splits import SplitError, dirichlet_partition, holdout_split, make_partition


def grouped(n_groups: int = 60, seed: int = 0):
    """Labels and groups: groups of 1-6 images, one class per group, classes unbalanced."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        cls = int(rng.random() < 0.4)
        for _ in range(int(rng.integers(1, 7))):
            labels.append(cls)
            groups.append(f"g{g}")
    return np.array(labels), tuple(groups)


def test_holdout_split_keeps_groups_whole_and_is_stratified():
    labels, groups = grouped()
    train, test = holdout_split(labels, groups, 0.2, seed=3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    for cls in (0, 1):
        share = np.mean(labels[test] == cls) if len(test) else 0
        assert abs(share - np.mean(labels == cls)) < 0.12
    assert 0.12 < len(test) / len(labels) < 0.28


def test_holdout_split_depends_on_the_seed_only():
    labels, groups = grouped()
    a = holdout_split(labels, groups, 0.2, seed=1)[1]
    b = holdout_split(labels, groups, 0.2, seed=1)[1]
    c = holdout_split(labels, groups, 0.2, seed=2)[1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_class_with_two_groups_reaches_the_test_split():
    labels = np.array([0, 0, 1, 1])
    groups = ("a", "b", "c", "d")
    _, test = holdout_split(labels, groups, 0.1, seed=0)
    assert sorted(labels[test].tolist()) == [0, 1]


def test_dirichlet_partition_keeps_groups_on_one_site_and_skews_labels():
    labels, groups = grouped(120)
    train, _ = holdout_split(labels, groups, 0.2, seed=0)
    sites = dirichlet_partition(train, labels, groups, n_sites=4, alpha=0.3, seed=0, min_items=5)
    assert sorted(np.concatenate(sites).tolist()) == sorted(train.tolist())
    owners: dict[str, int] = {}
    for site, rows in enumerate(sites):
        assert len(rows) >= 5
        for i in rows:
            assert owners.setdefault(groups[i], site) == site
    shares = [np.mean(labels[rows]) for rows in sites]
    assert max(shares) - min(shares) > 0.3  # alpha 0.3: clearly different label mixes


def test_make_partition_never_puts_test_images_on_sites():
    labels, groups = grouped(80)
    partition = make_partition(labels, groups, 5, 0.5, 0.2, seed=7)
    assert not set(partition.test.tolist()) & set(partition.train.tolist())
    assert not {groups[i] for i in partition.test} & {groups[i] for i in partition.train}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_sites": 50}, "cannot fill"),
        ({"n_sites": 0}, "at least one site"),
        ({"alpha": 0.0}, "alpha"),
    ],
)
def test_partition_refuses_impossible_requests(kwargs, match):
    labels, groups = grouped(20)
    args = {"n_sites": 3, "alpha": 0.5, "seed": 0, **kwargs}
    with pytest.raises(SplitError, match=match):
        dirichlet_partition(np.arange(len(labels)), labels, groups, **args)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2])
def test_holdout_fraction_must_be_inside_zero_one(fraction):
    labels, groups = grouped(10)
    with pytest.raises(SplitError, match="fraction"):
        holdout_split(labels, groups, fraction, seed=0)
