"""The structure the README draws, checked from the source: who may import whom, who owns which table.

Read from the files with ``ast`` (nothing is imported, so this runs in a second):

* no import cycle between modules of ``ftlct``, and none between the agent's
  packages (``ftlct.agent.store``, ``.series``, ... and its top-level modules);
* ``agent`` and ``cloud`` never import each other, nor ``bench``; ``protocol``
  and ``export`` import none of the three;
* agent training imports nothing of sync, and sync reaches training only through
  its entry points (a plan in, ``(delta, n_samples, metrics)`` out);
* every SQLite table of the agent has one owner: the module whose SQL creates
  it, and no other module's SQL names it (a stage calls the owner instead; for
  a join inside SQLite the owner publishes a view, which others may read).

Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"agent": "ftlct.agent", "cloud": "ftlct.cloud", "protocol": "ftlct.protocol"}
PARTS |= {"export": "ftlct.export", "bench": "ftlct.bench"}
FORBIDDEN = {
    "ftlct.agent": ("ftlct.cloud", "ftlct.bench"),
    "ftlct.cloud": ("ftlct.agent", "ftlct.bench"),
    "ftlct.protocol": ("ftlct.agent", "ftlct.cloud", "ftlct.bench"),
    "ftlct.export": ("ftlct.agent", "ftlct.cloud", "ftlct.bench"),
}
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE)\b")
CREATES = re.compile(r"\bCREATE\s+(?:TEMP\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z_]\w*)")
VIEWS = re.compile(r"\bCREATE\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z_]\w*)")
SQL_FUNCTIONS = {"json_each", "json_tree"}  # table-valued functions, not tables
NAMES = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?:\s+IF\s+NOT\s+EXISTS)?"
    r"|INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\s+ON)\s+([A-Za-z_][\w.]*)"
)
# Outside the agent, owned by another part (no stale check: its owner removes it).
KNOWN_MODULE_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PARTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            name = ".".join([package, *[p for p in parts if p != "__init__"]])
            found[name] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _resolve(name: str) -> str | None:
    """The module ``name`` refers to (``from pkg import module`` names a module too)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    targets = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = _resolve(f"{node.module}.{alias.name}")
                if target:
                    targets.add(target)
        elif isinstance(node, ast.Import):
            targets |= {t for a in node.names if (t := _resolve(a.name))}
    return targets - {module}


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _agent_package(module: str) -> str:
    """``ftlct.agent.store.layout`` -> ``ftlct.agent.store``; top-level modules stand alone."""
    return ".".join(module.split(".")[:3])


def _sql_strings(module: str) -> list[str]:
    return [
        node.value
        for node in ast.walk(TREES[module])
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value)
    ]


def _tables() -> tuple[dict[str, str], dict[str, set[str]], set[str]]:
    """``(table -> owner module, module -> tables its SQL names, published views)``."""
    owners: dict[str, str] = {}
    named: dict[str, set[str]] = defaultdict(set)
    views: set[str] = set()
    for module in MODULES:
        if not module.startswith("ftlct.agent"):
            continue
        for text in _sql_strings(module):
            for table in CREATES.findall(text):
                assert owners.get(table, module) == module, (
                    f"table {table} is created by {owners[table]} and {module}"
                )
                owners[table] = module
            views |= set(VIEWS.findall(text))
            named[module] |= tables_named(text)
    return owners, named, views


def tables_named(sql: str) -> set[str]:
    """The tables a piece of SQL reads, writes or creates (an ATTACHed ``idx.t`` is ``t``)."""
    tables = {name.rpartition(".")[2] for name in NAMES.findall(sql)}
    return {t for t in tables if not t.startswith("sqlite_") and t not in SQL_FUNCTIONS}


def test_no_module_imports_itself_through_others():
    cycles = {frozenset(c) for c in _cycles(GRAPH)}
    assert cycles - KNOWN_MODULE_CYCLES == set()


def test_no_import_cycle_between_agent_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        if module.startswith("ftlct.agent."):
            packages[_agent_package(module)] |= {
                _agent_package(t)
                for t in targets
                if t.startswith("ftlct.agent.") and _agent_package(t) != _agent_package(module)
            }
    assert _cycles(packages) == [], "an import cycle between agent packages"


def test_training_returns_results_and_sync_uses_only_its_entry_points():
    # Training takes a plan and returns (delta, n_samples, metrics); sync plans, seals and
    # sends. So training knows nothing of sync, and sync calls training's public modules only.
    entry_points = {"local_round", "runner", "recipe", "labelled_data", "gate"}
    training_to_sync = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        if m.startswith("ftlct.agent.training.")
        for t in targets
        if t.startswith("ftlct.agent.sync")
    )
    assert training_to_sync == []
    sync_to_internals = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        if m.startswith("ftlct.agent.sync.")
        for t in targets
        if t.startswith("ftlct.agent.training.") and t.rpartition(".")[2] not in entry_points
    )
    assert sync_to_internals == []


def test_agent_cloud_protocol_and_export_import_only_what_they_may():
    wrong = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        for target in targets
        for part, banned in FORBIDDEN.items()
        if module.startswith(part + ".") or module == part
        if target.startswith(banned)
    )
    assert wrong == []


def test_each_table_is_named_in_sql_only_by_its_owner_module():
    owners, named, views = _tables()
    named = {m: tables - views for m, tables in named.items()}
    unknown = sorted((m, t) for m, tables in named.items() for t in tables if t not in owners)
    assert unknown == [], "SQL names a table no agent module creates"
    foreign = sorted((m, t) for m, tables in named.items() for t in tables if owners[t] != m)
    assert foreign == [], "a stage reaches into another's table: ask its owner module"


def test_the_table_rule_sees_joins_attachments_indexes_and_writes():
    # The checker itself: a rule that matched nothing would pass vacuously.
    sql = (
        "SELECT COUNT(*) FROM embeddings e JOIN idx.instances i ON i.sop = e.sop"
        " WHERE EXISTS (SELECT 1 FROM idx.labels l WHERE l.uid = e.uid)"
    )
    assert tables_named(sql) == {"embeddings", "instances", "labels"}
    assert tables_named("UPDATE deliveries SET state = ? WHERE id = ?") == {"deliveries"}
    assert tables_named("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)") == {"meta"}
    assert tables_named("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)") == {"jobs"}
    assert tables_named("SELECT value FROM json_each(?)") == set()
    owners, _, views = _tables()
    assert {"instances", "series", "labels", "outbox", "embeddings", "meta"} <= set(owners)
    assert views == {"current_instances"}
    assert "ftlct.agent.store.database" in GRAPH["ftlct.agent.service"]
