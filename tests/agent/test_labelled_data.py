"""What local training may use: kept embeddings of the current copies, joined to labels."""

from __future__ import annotations

from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore, Outcome
from ftlct.agent.training.labelled_data import count_labelled, labelled_data
from tests.agent.dicom_files import ct_instance, part10_bytes
from tests.agent.federation_support import BACKBONE, LABELS, site_with_embeddings


def test_labels_count_at_every_level_and_only_for_the_current_copy(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=2, slices=3)
    db = Database(layout.index)
    LabelStore(db).set_many(
        [
            (records[0].study_uid, "normal"),  # 3 slices through the study
            (records[1].series_uid, "abnormal"),  # 3 through the series
            (records[2].sop_uids[0], "normal"),  # 1 instance
            ("1.2.3.999", "normal"),  # pending: not received, counts nothing
        ],
        LABELS,
        "test",
        allow_pending=True,
    )
    assert count_labelled(layout.root, BACKBONE) == 7
    assert len(labelled_data(layout.root, db, BACKBONE, LABELS)) == 7
    assert count_labelled(layout.root, "another-backbone") == 0

    # New bytes for a labelled instance: its kept embedding described the old copy.
    guard = DiskGuard(lambda: 10**15, 0)
    store = InstanceStore(layout, db, guard, series=SeriesIndex(db), on_conflict="replace")
    first = records[0]
    replacement = ct_instance(first.series_uid, first.study_uid, first.sop_uids[0], 99)
    assert store.put(part10_bytes(replacement)).outcome is Outcome.REPLACED
    assert count_labelled(layout.root, BACKBONE) == 6
    assert len(labelled_data(layout.root, db, BACKBONE, LABELS)) == 6
    db.close()


def test_a_data_dir_without_labels_or_embeddings_counts_nothing(tmp_path):
    assert count_labelled(tmp_path / "nothing-here", BACKBONE) == 0
    layout, _ = site_with_embeddings(tmp_path / "agent", per_class=1, slices=1)
    assert count_labelled(layout.root, BACKBONE) == 0
