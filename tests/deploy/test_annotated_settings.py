"""deploy/agent.toml and deploy/cloud.toml name every setting with its true default.

Each "#key = value" line is a default. Uncommented, the file is loaded with the
program's own loader and must give exactly the default settings object; every
leaf of the settings dataclass tree must appear. A new setting without a line
there, or a changed default, fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ftlct.agent.settings import AgentSettings
from ftlct.agent.settings import load_settings as load_agent_settings
from ftlct.cloud.settings import CloudSettings, load_cloud_settings
from ftlct.protocol.settings import SettingsError
from tests.support.paths import REPO

DEPLOY = REPO / "deploy"
DEFAULT_LINE = re.compile(r"^#([a-z_][a-z0-9_]*) = (.+)$")
TABLE_LINE = re.compile(r"^\[([a-z_.]+)\]$")


def documented_defaults(path: Path) -> tuple[str, dict[str, str]]:
    """The file with every default line uncommented, and ``{dotted key: value text}``."""
    lines, found, table = [], {}, ""
    for line in path.read_text().splitlines():
        if match := TABLE_LINE.match(line):
            table = match.group(1) + "."
        elif match := DEFAULT_LINE.match(line):
            key = table + match.group(1)
            assert key not in found, f"{path.name}: {key} documented twice"
            found[key] = match.group(2)
            line = line[1:]
        lines.append(line)
    return "\n".join(lines) + "\n", found


def leaves(settings, prefix: str = "") -> dict[str, object]:
    """``{dotted key: default}`` for every leaf of a settings dataclass tree."""
    out = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            out.update(leaves(value, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = value
    return out


def _no_xdg(monkeypatch):
    # the data/state dir defaults follow $XDG_DATA_HOME; the files document its absence
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)


def _normalise(settings):
    # the agent's model_dir default is the source tree's models/default, documented as such
    values = leaves(settings)
    if "inference.model_dir" in values:
        values["inference.model_dir"] = Path(values["inference.model_dir"]).name
    if "state_dir" in values:
        values["state_dir"] = str(Path(values["state_dir"]).expanduser())
    return values


@pytest.mark.parametrize(
    ("name", "cls"), [("agent.toml", AgentSettings), ("cloud.toml", CloudSettings)]
)
def test_every_setting_is_documented_in_the_annotated_file(name, cls, monkeypatch):
    _no_xdg(monkeypatch)
    _, documented = documented_defaults(DEPLOY / name)
    missing = sorted(set(leaves(cls())) - set(documented))
    assert not missing, f"deploy/{name} lacks {missing}: add each with its default"


def test_agent_toml_defaults_are_the_agents_defaults(tmp_path, monkeypatch):
    _no_xdg(monkeypatch)
    text, _ = documented_defaults(DEPLOY / "agent.toml")
    (tmp_path / "agent.toml").write_text(text)
    loaded = load_agent_settings(tmp_path / "agent.toml", env={})
    expected = _normalise(AgentSettings())
    got = _normalise(loaded)
    differing = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert not differing, f"deploy/agent.toml documents other defaults: {differing}"


def test_cloud_toml_defaults_are_the_clouds_defaults(tmp_path, monkeypatch):
    _no_xdg(monkeypatch)
    text, _ = documented_defaults(DEPLOY / "cloud.toml")
    (tmp_path / "cloud.toml").write_text(text)
    loaded = load_cloud_settings(tmp_path / "cloud.toml", env={})
    expected, got = _normalise(CloudSettings()), _normalise(loaded)
    differing = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert not differing, f"deploy/cloud.toml documents other defaults: {differing}"


@pytest.mark.parametrize("name", ["agent.toml", "cloud.toml"])
def test_the_shipped_file_loads_as_the_defaults(name, monkeypatch):
    _no_xdg(monkeypatch)
    if name == "agent.toml":
        loaded, default = load_agent_settings(DEPLOY / name, env={}), AgentSettings()
    else:
        loaded, default = load_cloud_settings(DEPLOY / name, env={}), CloudSettings()
    assert leaves(loaded) == leaves(default)


def test_a_documented_key_the_program_does_not_know_is_caught(tmp_path, monkeypatch):
    # the check above is only worth something if a stale line fails the loader
    _no_xdg(monkeypatch)
    text, _ = documented_defaults(DEPLOY / "agent.toml")
    stale = text.replace("[series]\n", "[series]\nquiet_period = 5.0\n")
    (tmp_path / "agent.toml").write_text(stale)
    with pytest.raises(SettingsError, match="quiet_period"):
        load_agent_settings(tmp_path / "agent.toml", env={})
