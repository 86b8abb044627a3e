"""The leak checks the experiment runs before training refuse every way a test image could slip in."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ftlct.agent.training.local_training import ArrayDataset
from ftlct.bench.dataset import LabelledImages
from ftlct.bench.experiment import LeakError, check_arrays_disjoint, check_no_leak
from ftlct.bench.federation import SiteData
from ftlct.bench.splits import Partition

DATA = LabelledImages(
    root=None,
    classes=("a", "b"),
    paths=tuple(f"x/{i}.png" for i in range(8)),
    labels=np.array([0, 0, 1, 1, 0, 1, 0, 1]),
    groups=("p0", "p0", "p1", "p2", "p3", "p4", "p5", "p5"),
)


def test_a_clean_partition_passes():
    check_no_leak(
        DATA, Partition(test=np.array([2, 3]), sites=(np.array([0, 1, 4]), np.array([5, 6, 7])))
    )


@pytest.mark.parametrize(
    ("test", "sites", "match"),
    [
        ([2, 3], ([0, 1, 2], [5, 6, 7]), "test images"),  # a test image on a site
        ([6], ([0, 1], [7]), "test groups"),  # its patient's other slice on a site
        ([2], ([0, 1, 4], [4, 5]), "two sites"),  # one image on two sites
    ],
)
def test_leaks_are_refused(test, sites, match):
    partition = Partition(test=np.array(test), sites=tuple(np.array(s) for s in sites))
    with pytest.raises(LeakError, match=match):
        check_no_leak(DATA, partition)


def test_training_arrays_must_name_rows_outside_the_test_split():
    partition = Partition(test=np.array([2, 3]), sites=(np.array([0, 1]),))
    plan = SimpleNamespace(dataset=DATA, partition=partition)

    def site(rows):
        rows = np.array(rows)
        return SiteData(
            "s", ArrayDataset(np.zeros((len(rows), 4)), DATA.labels[rows]), np.zeros((2, 4)), rows
        )

    check_arrays_disjoint(plan, [site([0, 1, 0, 1])])  # jittered copies of its own rows are fine
    with pytest.raises(LeakError, match="test images"):
        check_arrays_disjoint(plan, [site([0, 3])])
    with pytest.raises(LeakError, match="group"):
        check_arrays_disjoint(
            SimpleNamespace(dataset=DATA, partition=Partition(np.array([6]), (np.array([7]),))),
            [site([7])],
        )
    with pytest.raises(LeakError, match="say which"):
        check_arrays_disjoint(
            plan, [SiteData("s", ArrayDataset(np.zeros((1, 4)), np.array([0])), np.zeros((1, 4)))]
        )
