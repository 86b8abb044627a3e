"""The cloud's state: one owner module per table, and transactions that nest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftlct.cloud.state import StateStore

CLOUD = Path(__file__).resolve().parents[2] / "cloud"
SQL_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|EXISTS)\s+([a-z_]+)\b")


def test_each_table_is_touched_only_by_its_owner_module():
    users: dict[str, set[str]] = {}
    for path in CLOUD.rglob("*.py"):
        for table in SQL_TABLE.findall(path.read_text()):
            users.setdefault(table, set()).add(path.relative_to(CLOUD).as_posix())
    assert users, "no SQL found under cloud/"
    for table, modules in users.items():
        assert len(modules) == 1 and next(iter(modules)).startswith("state/"), (table, modules)


def test_an_inner_transaction_rolls_back_alone(tmp_path):
    store = StateStore.open(tmp_path)
    with store.transaction():
        store.counters.bump("kept")
        with pytest.raises(RuntimeError), store.transaction():
            store.counters.bump("dropped")
            raise RuntimeError("one message failed")
        store.counters.bump("kept")
    store.close()
    reopened = StateStore.open(tmp_path)
    assert reopened.counters.all() == {"kept": 2}
    reopened.close()


def test_an_outer_failure_rolls_back_everything(tmp_path):
    store = StateStore.open(tmp_path)
    with pytest.raises(RuntimeError), store.transaction():
        store.meta.set("federation", "f")
        with store.transaction():
            store.counters.bump("inner")
        raise RuntimeError("the batch failed")
    assert store.meta.get("federation") is None and store.counters.all() == {}
    store.close()
