"""DESIGN.md's command-line contract, for every command of every program.

Each (sub)command answers ``--help`` and meets an unknown flag with one line on
stderr and a non-zero exit. Commands are discovered from the typer apps, so a
new command is covered without editing this file.
"""

from __future__ import annotations

import importlib

import pytest
import typer

from ftlct.protocol.cli import run

PROGRAMS = {
    "ftl-agent": "ftlct.agent.cli",
    "ftl-cloud": "ftlct.cloud.cli",
    "ftl-export": "ftlct.export.cli",
    "ftl-bench": "ftlct.bench.cli",
}


def _commands(command, path=()):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _all_commands():
    for prog, module in PROGRAMS.items():
        app = importlib.import_module(module).app
        for path in _commands(typer.main.get_command(app)):
            yield pytest.param(prog, app, list(path), id=" ".join((prog, *path)))


COMMANDS = list(_all_commands())


def test_every_program_has_its_design_commands():
    found = {(prog, " ".join(path)) for prog, _, path in (c.values for c in COMMANDS)}
    for prog, command in [
        ("ftl-agent", "serve"), ("ftl-agent", "status"), ("ftl-agent", "results"),
        ("ftl-agent", "label import"), ("ftl-agent", "label set"), ("ftl-agent", "train"),
        ("ftl-agent", "infer"), ("ftl-agent", "identity"), ("ftl-cloud", "serve"),
        ("ftl-cloud", "status"), ("ftl-cloud", "identity"), ("ftl-cloud", "enroll"),
        ("ftl-cloud", "broker-config"), ("ftl-export", "build"), ("ftl-export", "verify"),
        ("ftl-bench", "federation"), ("ftl-bench", "perf"),
    ]:  # fmt: skip
        assert (prog, command) in found


@pytest.mark.parametrize(("prog", "app", "path"), COMMANDS)
def test_help(prog, app, path, capsys):
    assert run(app, prog, [*path, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


@pytest.mark.parametrize(("prog", "app", "path"), COMMANDS)
def test_unknown_flag_is_one_line(prog, app, path, capsys):
    assert run(app, prog, [*path, "--no-such-flag"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), lines
