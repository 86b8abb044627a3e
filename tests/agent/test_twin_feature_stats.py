"""The twin's feature statistics: per embedding block, over the site's recent stored slices,
never below the minimum, never for a layout that does not describe the vectors."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import numpy as np
import pytest

from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.settings import AgentSettings, TwinSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from ftlct.agent.twin.feature_stats import feature_statistics, recent_feature_stats
from ftlct.export.embedding_blocks import LAYOUT, embedding_blocks
from ftlct.export.model_dir import ModelDir
from ftlct.protocol.settings import SettingsError
from ftlct.protocol.twin_state import validate_twin_state
from tests.agent.dicom_files import ct_instance, part10_bytes

BACKBONE = "0123456789abcdef" * 4
# two taps of 2 and 1 channels, mean and max: blocks at columns [0,2) [2,4) [4,5) [5,6)
OUTPUT = {
    "name": "embedding",
    "dim": 6,
    "taps": [10, 13],
    "tap_names": ["features.10", "features.13"],
    "tap_channels": [2, 1],
    "pooling": ["mean", "max"],
    "layout": LAYOUT,
}
KNOWN = np.array(
    [
        [1, 3, 5, 7, 0.5, -2],
        [3, 5, 9, 11, 1.5, -4],
        [-1, 1, 1, 3, 0.25, 0],
        [1, 1, 1, 1, 1 / 3, 0],
    ],
    dtype=np.float32,
)


def _model(output: dict = OUTPUT, sha256: str = BACKBONE) -> ModelDir:
    """Only the manifest matters here: the statistics never run the backbone."""
    return ModelDir(None, {"backbone": {"sha256": sha256, "output": output}})


class Site:
    """A data dir whose index holds the instances the stored embeddings belong to."""

    def __init__(self, root):
        self.layout = DataDir(root).create()
        self.db = Database(self.layout.index)
        self.store = InstanceStore(
            self.layout, self.db, DiskGuard(lambda: 10**15, 0), series=SeriesIndex(self.db)
        )
        self._now = itertools.count(1000)
        self.embeddings = EmbeddingStore(self.layout, clock=lambda: float(next(self._now)))
        self._studies = itertools.count()

    def study(self, vectors: np.ndarray, backbone: str = BACKBONE) -> None:
        """One study of one series, a slice per row of ``vectors``, embedded in row order."""
        index = next(self._studies)
        study = f"1.2.826.0.1.3680043.10.77.{index}"
        series = f"{study}.1"
        for k, vector in enumerate(vectors):
            sop = f"{series}.{k}"
            ds = ct_instance(series, study, sop, instance_number=k + 1)
            assert self.store.put(part10_bytes(ds)).ok
            row = dict(
                self.db.query_one("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop,))
            )
            self.embeddings.put_many([(row, vector[None, :])], backbone)

    def close(self) -> None:
        self.embeddings.close()
        self.db.close()


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path / "agent")
    yield site
    site.close()


def test_block_statistics_of_known_embeddings_are_exact():
    stats = feature_statistics(KNOWN, embedding_blocks(OUTPUT), BACKBONE)
    assert stats.backbone == "0123456789ab" and stats.slices == 4
    # per slice, each block's average: features.10 mean (2, 4, 0, 1), features.10 max
    # (6, 10, 2, 1), features.13 mean (0.5, 1.5, 0.25, 1/3), features.13 max (-2, -4, 0, 0);
    # their mean and population standard deviation, to 4 significant digits
    assert [(b.tap, b.pooling, b.mean, b.std) for b in stats.blocks] == [
        ("features.10", "mean", 1.75, 1.479),  # std sqrt(8.75 / 4)
        ("features.10", "max", 4.75, 3.562),  # sqrt(50.75 / 4)
        ("features.13", "mean", 0.6458, 0.5013),  # 2.5833 / 4, sqrt(1.00521 / 4)
        ("features.13", "max", -1.5, 1.658),  # sqrt(11 / 4)
    ]
    assert validate_twin_state({"feature_stats": asdict(stats)}).feature_stats == stats


def test_statistics_come_from_the_most_recent_slices_of_the_current_backbone(site):
    settings = TwinSettings(feature_window=40, feature_min_slices=32)
    site.study(np.full((30, 6), 100.0, np.float32))  # older: pushed out of the window
    site.study(np.full((20, 6), 7.0, np.float32), backbone="f" * 64)  # another backbone
    site.study(np.tile(KNOWN, (5, 1)))  # 20 slices
    site.study(np.tile(KNOWN, (5, 1)))
    stats = recent_feature_stats(site.embeddings, _model(), settings)
    assert stats.slices == 40
    # the window holds KNOWN ten times over: the same numbers as the four rows alone
    assert [(b.mean, b.std) for b in stats.blocks] == [
        (1.75, 1.479),
        (4.75, 3.562),
        (0.6458, 0.5013),
        (-1.5, 1.658),
    ]


def test_nothing_below_the_minimum_of_slices(site):
    settings = TwinSettings()  # at least 32 slices from at least 2 studies
    site.study(np.tile(KNOWN, (4, 1)))  # 16
    site.study(np.tile(KNOWN, (4, 1))[:15])  # 31 in all
    assert recent_feature_stats(site.embeddings, _model(), settings) is None
    site.study(KNOWN[:1])  # the 32nd slice
    assert recent_feature_stats(site.embeddings, _model(), settings).slices == 32


def test_one_study_alone_is_never_described_however_many_slices(site):
    site.study(np.tile(KNOWN, (25, 1)))  # 100 slices, one study
    assert recent_feature_stats(site.embeddings, _model(), TwinSettings()) is None
    site.study(KNOWN)
    assert recent_feature_stats(site.embeddings, _model(), TwinSettings()).slices == 104


def test_an_empty_store_gives_nothing(site):
    assert recent_feature_stats(site.embeddings, _model(), TwinSettings()) is None


@pytest.mark.parametrize(
    "output",
    [
        {**OUTPUT, "dim": 8},  # the blocks' sum (6) is not the manifest's dim
        {**OUTPUT, "tap_channels": [2]},  # a channel count missing
        {**OUTPUT, "layout": "each pooling, then each tap"},  # another layout
        {"name": "embedding", "dim": 6},  # an earlier single-layer manifest: no blocks
    ],
)
def test_a_layout_that_does_not_describe_the_vectors_is_left_out(site, output):
    site.study(np.tile(KNOWN, (10, 1)))
    site.study(np.tile(KNOWN, (10, 1)))
    assert embedding_blocks(output) is None
    assert recent_feature_stats(site.embeddings, _model(output), TwinSettings()) is None


def test_stored_vectors_of_another_width_are_left_out(site):
    wider = np.zeros((40, 10), np.float32)  # the manifest's layout says 6
    site.study(wider[:20])
    site.study(wider[20:])
    assert recent_feature_stats(site.embeddings, _model(), TwinSettings()) is None
    assert feature_statistics(wider, embedding_blocks(OUTPUT), BACKBONE) is None


def test_the_default_model_has_eight_named_blocks(model_dir):
    blocks = model_dir.embedding_blocks
    assert [b.name for b in blocks] == [
        f"features.{tap} {pool}" for tap in (10, 13, 16, 17) for pool in ("mean", "max")
    ]
    assert blocks[-1].stop == model_dir.embedding_dim


@pytest.mark.parametrize(
    ("twin", "named"),
    [
        ({"feature_window": 16, "feature_min_slices": 32}, "feature_min_slices"),
        ({"feature_min_slices": 0}, "feature_min_slices"),
        ({"feature_window": 2_000_000}, "feature_min_slices"),  # past the schema's bound
        ({"feature_min_studies": 0}, "feature_min_studies"),
    ],
)
def test_feature_settings_out_of_bounds_are_refused(twin, named):
    settings = AgentSettings()
    settings.twin = TwinSettings(**twin)
    with pytest.raises(SettingsError, match=rf"^twin\.{named}:"):
        settings.validate()
