"""The accepted updates: kept as they travelled, decoded as they were checked, each stored once."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from ftlct.cloud.state import StateStore
from ftlct.cloud.state.models import weights_to_blob
from ftlct.protocol import exchange
from ftlct.protocol.identity import load_or_create_identity

FED = "f"


def _received(tmp_path, codec: str, site: str = "a", update_id: str | None = None):
    identity = load_or_create_identity(tmp_path / "keys", site)
    delta = {
        "w": np.linspace(-0.5, 0.7, 8, dtype=np.float32).reshape(2, 4),
        "b": np.array([0.25, -0.125], np.float32),
    }
    data = exchange.build_update(
        identity, FED, round=1, base_version="v0", cluster="global", n_samples=3,
        delta=delta, codec=codec, update_id=update_id,
    )  # fmt: skip
    return exchange.open_update(data, lambda _: identity.public_b64, FED)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_an_update_is_kept_as_it_travelled_and_decodes_as_it_was_checked(tmp_path, codec):
    store = StateStore.open(tmp_path / "state")
    message = _received(tmp_path, codec)
    assert store.updates.add(1, message, 1.0)
    (by_iteration,) = list(store.updates.of_round(1))
    by_index = store.updates.of_round(1)[0]
    for update in (by_iteration, by_index):
        assert update.site == "a" and update.n_samples == 3 and update.cluster == "global"
        assert update.delta.keys() == message.delta.keys()
        for name, value in message.delta.items():
            assert update.delta[name].dtype == np.float32
            np.testing.assert_array_equal(update.delta[name], value)  # bit for bit
    store.close()
    with sqlite3.connect(tmp_path / "state" / "cloud.sqlite") as db:
        (stored,) = db.execute("SELECT delta FROM updates").fetchone()
    assert bytes(stored) == message.body  # the signed body, not a re-encoding


def test_an_older_clouds_table_gains_the_codec_column_and_its_float32_rows_still_decode(tmp_path):
    (tmp_path / "state").mkdir()
    delta = {"w": np.full((2, 4), 0.5, np.float32)}
    # the table as a cloud before delta_codec created it
    with sqlite3.connect(tmp_path / "state" / "cloud.sqlite") as db:
        db.execute(
            "CREATE TABLE updates (round INTEGER NOT NULL, site TEXT NOT NULL, "
            "update_id TEXT NOT NULL UNIQUE, cluster TEXT NOT NULL, base_version TEXT NOT NULL, "
            "n_samples INTEGER NOT NULL, metrics TEXT NOT NULL, norm REAL NOT NULL, delta BLOB, "
            "received_at REAL NOT NULL, PRIMARY KEY (round, site))"
        )
        db.execute(
            "INSERT INTO updates VALUES (1, 'old', 'old-update-1', 'global', 'v0', 2, '{}', 1.0, ?, 0)",
            (weights_to_blob(delta),),
        )
    store = StateStore.open(tmp_path / "state")
    assert store.updates.add(1, _received(tmp_path, "fp16"), 1.0)  # a new row beside the old one
    updates = {u.site: u for u in store.updates.of_round(1)}
    np.testing.assert_array_equal(updates["old"].delta["w"], delta["w"])
    assert updates["old"].n_samples == 2 and set(updates) == {"old", "a"}
    store.close()


def test_add_stores_nothing_for_a_known_update_id_or_a_sites_second_update(tmp_path):
    store = StateStore.open(tmp_path / "state")
    first = _received(tmp_path, "fp16", update_id="first-update")
    assert store.updates.add(1, first, 1.0)
    assert not store.updates.add(2, first, 1.0)  # the same update_id, in any round
    assert not store.updates.add(1, _received(tmp_path, "fp16"), 1.0)  # a's second in round 1
    assert store.updates.add(1, _received(tmp_path, "fp16", site="b"), 1.0)
    assert store.updates.count_of_round(1) == 2 and store.updates.count_of_round(2) == 0
    assert store.updates.find("first-update").site == "a"
    store.close()
