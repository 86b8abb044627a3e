"""The serve process caps glibc's malloc arenas, unless the environment already does."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from ftlct.agent.memory import limit_malloc_arenas

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")


def _run(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@glibc
def test_arenas_are_capped_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    code = "from ftlct.agent.memory import limit_malloc_arenas as f; print(f())"
    assert _run(code, {"PATH": "/usr/bin:/bin"}) == "True"


def test_the_environment_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
