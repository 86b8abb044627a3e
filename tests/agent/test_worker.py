"""The inference worker on a real model: results, kept embeddings, superseding, failures."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ftlct.agent.inference.embeddings import load_embeddings
from ftlct.agent.inference.results import ResultStore
from tests.agent.dicom_files import PYDICOM_TEST_FILES, ct_instance
from tests.agent.pipeline import Agent

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SERIES = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"


@pytest.fixture
def agent(tmp_path, model_dir):
    agent = Agent(tmp_path / "data", model_dir.path)
    yield agent
    agent.close()


def test_a_completed_series_gets_a_result_and_its_embeddings_are_kept(agent, model_dir):
    for n in range(3):
        agent.put(ct_instance(SERIES, STUDY, instance_number=n + 1))
    assert agent.complete_and_run()
    (result,) = agent.results
    assert (result.series_uid, result.study_uid, result.n_instances, result.n_slices) == (
        SERIES,
        STUDY,
        3,
        3,
    )
    assert set(result.probabilities) == {"normal", "abnormal"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.model_version == model_dir.version
    assert result.latency_s == pytest.approx(6.0)
    assert agent.db.scalar("SELECT state FROM series") == "inferred"
    assert agent.db.scalar("SELECT state FROM jobs") == "done"

    keys, vectors = load_embeddings(agent.data_dir.root, model_dir.backbone_sha256)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    assert set(keys.series_uids) == {SERIES} and set(keys.study_uids) == {STUDY}
    assert len(set(keys.sop_instance_uids)) == 3 and keys.frames == [0, 0, 0]
    assert load_embeddings(agent.data_dir.root, "another-backbone")[1].shape[0] == 0
    # the kept vectors are what the head saw: re-scoring them reproduces the result
    probs = agent.engine.current.probabilities(vectors)
    assert probs.mean(axis=0)[1] == pytest.approx(result.probabilities["abnormal"], abs=1e-5)


def test_eager_embedding_leaves_the_job_only_the_head(agent):
    for _ in range(4):
        agent.eager.instance_arrived(agent.put(ct_instance(SERIES, STUDY)).instance)
    assert agent.eager.run_once()  # an eager batch
    assert agent.slices_embedded() == 4
    assert agent.complete_and_run()
    assert agent.slices_embedded() == 4  # nothing decoded again
    assert agent.results[0].n_slices == 4


def test_more_instances_for_an_inferred_series_supersede_its_result(agent):
    agent.put(ct_instance(SERIES, STUDY))
    agent.complete_and_run()
    agent.put(ct_instance(SERIES, STUDY))  # the PACS resends, with one more slice
    agent.complete_and_run()
    current = ResultStore(agent.db).current()
    assert [r.n_instances for r in current] == [2]
    assert [r.n_instances for r in ResultStore(agent.db).history(SERIES)] == [1, 2]


def test_a_series_without_images_is_skipped_with_a_reason(agent):
    sr = pydicom.dcmread(PYDICOM_TEST_FILES / "test-SR.dcm")
    agent.put(sr)
    agent.complete_and_run()
    assert agent.results == []
    row = agent.db.query_one("SELECT state, reason FROM series")
    assert row["state"] == "skipped"
    assert "no usable image" in row["reason"] and "no pixel data" in row["reason"]


def test_an_undecodable_slice_is_skipped_and_the_rest_inferred(agent):
    for n in range(2):
        agent.put(ct_instance(SERIES, STUDY, instance_number=n))
    broken = agent.put(ct_instance(SERIES, STUDY, instance_number=9)).instance
    path = agent.store.path_of({"path": broken.path})
    path.write_bytes(path.read_bytes()[:-5000])  # pixel data cut short on disk
    agent.complete_and_run()
    (result,) = agent.results
    assert (result.n_instances, result.n_slices, result.n_skipped) == (3, 2, 1)


def test_a_failing_job_is_retried_then_marked_failed(agent):
    def broken_hook(conn, result):
        raise RuntimeError("downstream broke")

    agent.worker.result_hooks.append(broken_hook)
    agent.put(ct_instance(SERIES, STUDY))
    agent.complete_and_run()
    job = agent.db.query_one("SELECT * FROM jobs")
    assert (job["state"], job["attempts"]) == ("pending", 1)
    assert "downstream broke" in job["error"]
    for _ in range(2):
        agent.now += 60
        agent.worker.run_once()
    assert agent.db.scalar("SELECT state FROM jobs") == "failed"
    assert agent.db.scalar("SELECT state FROM series") == "failed"
    assert ResultStore(agent.db).current() == []  # the hook's failure rolled the result back


def test_writing_embeddings_never_locks_the_store_out(agent):
    """The embeddings handle reads the index through ATTACH; its writes must not lock it."""
    stored = agent.put(ct_instance(SERIES, STUDY)).instance
    row = agent.store.instances_of(SERIES)[0]
    with agent.embeddings.db.transaction() as conn:
        conn.execute(
            "INSERT INTO unembeddable (sop_instance_uid, instance_sha256, reason) VALUES (?, ?, ?)",
            (row["sop_instance_uid"], row["sha256"], "held open"),
        )
        # a C-STORE arriving meanwhile commits at once
        assert agent.put(ct_instance(SERIES, STUDY)).ok
    assert stored.sop_instance_uid == row["sop_instance_uid"]
