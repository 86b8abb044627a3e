"""Helpers for the federation tests: a site's data dir with embeddings, and a scripted cloud."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from ftlct.protocol.exchange import build_global_model, build_receipt, build_round
from ftlct.protocol.identity import Identity, load_or_create_identity
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.receipt import Receipt
from tests.agent.dicom_files import ct_instance, part10_bytes

FED = "fedtest"
LABELS = ["normal", "abnormal"]
BACKBONE = "b" * 64


@dataclass
class SeriesRecord:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    label: str


def site_with_embeddings(
    root: Path, per_class: int = 4, slices: int = 3, dim: int = 8, seed: int = 0
) -> tuple[DataDir, list[SeriesRecord]]:
    """Instances in the index and class-separable embeddings for them (no ONNX run needed):
    class c's vectors sit around +-2 on the first axis."""
    layout = DataDir(root).create()
    db = Database(layout.index)
    store = InstanceStore(layout, db, DiskGuard(lambda: 10**15, 0), series=SeriesIndex(db))
    embeddings = EmbeddingStore(layout)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(per_class * 2):
        label = LABELS[i % 2]
        study = f"1.2.826.0.1.3680043.10.{seed}.{i}"
        series = f"{study}.1"
        sops = [f"{series}.{k}" for k in range(slices)]
        items = []
        for k, sop in enumerate(sops):
            result = store.put(part10_bytes(ct_instance(series, study, sop, instance_number=k + 1)))
            assert result.ok, result.reason
            row = dict(db.query_one("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop,)))
            vector = rng.normal(0, 0.5, size=(1, dim)).astype(np.float32)
            vector[0, 0] += 2.0 if label == "abnormal" else -2.0
            items.append((row, vector))
        embeddings.put_many(items, BACKBONE)
        records.append(SeriesRecord(study, series, sops, label))
    db.set_meta("model_labels", '["normal", "abnormal"]')
    embeddings.close()
    db.close()
    return layout, records


def zero_head(dim: int = 8) -> dict[str, np.ndarray]:
    return {
        "dense.0.weight": np.zeros((2, dim), np.float32),
        "dense.0.bias": np.zeros(2, np.float32),
    }


class ScriptedCloud:
    """Signs round announcements and global models the way ``ftl-cloud serve`` does."""

    def __init__(self, keys_dir: Path, federation: str = FED):
        self.identity: Identity = load_or_create_identity(keys_dir, "cloud")
        self.federation = federation

    @property
    def key(self) -> str:
        return self.identity.public_b64

    def round(
        self,
        number: int,
        base: str,
        status: str = "open",
        training: dict | None = None,
        assignments: dict | None = None,
        cluster: str = "global",
    ) -> bytes:
        now = time.time()
        announcement = RoundAnnouncement(
            round=number,
            strategy="ftl",
            deadline=now + 600,
            opened_at=now,
            base_versions={cluster: base},
            default_cluster="global",
            assignments=assignments or {},
            min_sites=1,
            training=training if training is not None else {"max_delta_norm": 100.0},
            status=status,
        )
        return build_round(self.identity, self.federation, announcement)

    def model(
        self,
        version: str,
        weights: dict[str, np.ndarray],
        round_no: int = 0,
        labels: list[str] | None = None,
        backbone: str = BACKBONE,
        cluster: str = "global",
    ) -> bytes:
        model = GlobalModel(
            cluster=cluster,
            version=version,
            round=round_no,
            labels=labels or list(LABELS),
            backbone_sha256=backbone,
            weights={k: np.asarray(v, np.float32) for k, v in weights.items()},
        )
        return build_global_model(self.identity, self.federation, model)

    def receipt(
        self, site: str, update_id: str, round_no: int, outcome: str, reason: str = ""
    ) -> bytes:
        return build_receipt(
            self.identity, self.federation, Receipt(site, update_id, round_no, outcome, reason)
        )
