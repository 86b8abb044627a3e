"""``models`` and ``federation``: every global model ever made, and which ones are current.

A model row is (cluster, version, round, base version, float32 weights as
safetensors). The single ``federation`` row names the current version of each
cluster, the site -> cluster membership and the strategy's private state
(``FederationState.extra``): with the model rows it is the whole
``FederationState`` a restart resumes from.
"""

from __future__ import annotations

import json
import time

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from ftlct.cloud.state.database import Database
from ftlct.cloud.strategies import FederationState

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    cluster TEXT NOT NULL, version TEXT NOT NULL, round INTEGER NOT NULL, base_version TEXT,
    weights BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (cluster, version));
CREATE TABLE IF NOT EXISTS federation (
    id INTEGER PRIMARY KEY CHECK (id = 1), round INTEGER NOT NULL, versions TEXT NOT NULL,
    membership TEXT NOT NULL, extra TEXT NOT NULL);
"""


def weights_to_blob(weights: dict[str, np.ndarray]) -> bytes:
    return save_tensors({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()})


def blob_to_weights(blob: bytes) -> dict[str, np.ndarray]:
    return load_tensors(blob)


class ModelStore:
    def __init__(self, db: Database):
        self.db = db

    def add(self, cluster: str, version: str, round_: int, base_version: str | None, weights):
        self.db.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?)",
            (cluster, version, round_, base_version, weights_to_blob(weights), time.time()),
        )

    def weights(self, cluster: str, version: str) -> dict[str, np.ndarray]:
        row = self.db.execute(
            "SELECT weights FROM models WHERE cluster = ? AND version = ?", (cluster, version)
        ).fetchone()
        if row is None:
            raise KeyError(f"no model {cluster}/{version}")
        return blob_to_weights(row[0])

    def row(self, cluster: str, version: str) -> tuple[int, str | None]:
        """``(round it was made in, the version it was aggregated from)``."""
        row = self.db.execute(
            "SELECT round, base_version FROM models WHERE cluster = ? AND version = ?",
            (cluster, version),
        ).fetchone()
        return int(row[0]), row[1]

    def count_of_round(self, round_: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM models WHERE round = ?", (round_,)).fetchone()[
            0
        ]

    def save_federation(
        self, state_round: int, versions: dict, membership: dict, extra: dict
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO federation VALUES (1, ?, ?, ?, ?)",
            (state_round, json.dumps(versions), json.dumps(membership), json.dumps(extra)),
        )

    def current_versions(self) -> dict[str, str]:
        row = self.db.execute("SELECT versions FROM federation WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else {}

    def federation_state(self) -> tuple[FederationState, dict[str, str]] | None:
        """``(state with current weights, cluster -> version)``; None before initialisation."""
        row = self.db.execute(
            "SELECT round, versions, membership, extra FROM federation WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        versions = json.loads(row[1])
        models = {c: self.weights(c, v) for c, v in versions.items()}
        state = FederationState(models, json.loads(row[2]), int(row[0]), json.loads(row[3]))
        return state, versions
