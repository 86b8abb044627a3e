"""The local training set: kept slice embeddings joined to confirmed labels (numpy, no torch).

A slice takes the label of its SOP instance, else of its series, else of its
study (the most specific wins). The held-out split is by *series* and stable:
a series is held out when its hash (with the seed) ranks low among the series
of its class, so the same series are held out every round and no slice of a
held-out series is ever trained on (slices of one series look alike; a
per-slice split would leak).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.agent.inference.embeddings import (
    EmbeddingStore,
    load_embeddings,
    publish_current_instances,
)
from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.store.database import Database
from ftlct.agent.store.layout import DataDir


@dataclass(frozen=True)
class LabelledData:
    vectors: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N], indices into the model's labels
    series: np.ndarray  # [N] the series each slice belongs to

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_series(self) -> int:
        return len(set(self.series.tolist()))

    def take(self, index: np.ndarray) -> LabelledData:
        return LabelledData(self.vectors[index], self.labels[index], self.series[index])


def labelled_data(
    data_root: Path, db: Database, backbone_sha256: str, label_names: list[str]
) -> LabelledData:
    """Every kept embedding of ``backbone_sha256`` that has a label in ``label_names``."""
    keys, vectors = load_embeddings(data_root, backbone_sha256)
    labels = LabelStore(db).all()
    index = {name: i for i, name in enumerate(label_names)}
    rows, classes, series = [], [], []
    for i in range(len(keys)):
        label = (
            labels.get(keys.sop_instance_uids[i])
            or labels.get(keys.series_uids[i])
            or labels.get(keys.study_uids[i])
        )
        if label in index:
            rows.append(i)
            classes.append(index[label])
            series.append(keys.series_uids[i])
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    return LabelledData(
        vectors[rows] if rows else np.zeros((0, dim), np.float32),
        np.asarray(classes, dtype=np.int64),
        np.asarray(series, dtype=object),
    )


def count_labelled(data_root: Path, backbone_sha256: str) -> int:
    """Labelled slice embeddings (serve checks this often: counted in SQL, nothing loaded)."""
    layout = DataDir(data_root)
    if not layout.embeddings.is_file() or not layout.index.is_file():
        return 0
    index = Database(layout.index, create=False)
    try:
        uids = LabelStore(index, create=False).uids()
    finally:
        index.close()
    if not uids:
        return 0
    publish_current_instances(layout)
    embeddings = EmbeddingStore(layout)
    try:
        return embeddings.count_of(backbone_sha256, uids)
    finally:
        embeddings.close()


def holdout_split(data: LabelledData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_index, val_index)``: about ``fraction`` of each class's series held out,
    always leaving each class at least one training series."""
    if fraction <= 0 or len(data) == 0:
        return np.arange(len(data)), np.zeros(0, dtype=np.int64)
    series_class: dict[str, int] = {}
    for uid, label in zip(data.series.tolist(), data.labels.tolist(), strict=True):
        series_class.setdefault(uid, label)  # a series labelled twice counts under its first
    held: set[str] = set()
    for cls in sorted(set(series_class.values())):
        members = sorted(
            (uid for uid, c in series_class.items() if c == cls),
            key=lambda uid: hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest(),
        )
        take = min(round(len(members) * fraction), len(members) - 1)
        held.update(members[:take])
    is_val = np.asarray([uid in held for uid in data.series.tolist()], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
