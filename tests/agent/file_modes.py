"""Modes of the files in an agent's data dir: directories 0700, files 0600."""

from __future__ import annotations

import stat


def modes(root) -> dict[str, int]:
    """``{relative path: mode}`` of the tree under ``root``, root included."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def not_private(root) -> dict[str, str]:
    """Paths under ``root`` whose mode is not 0700 (directories) or 0600 (files), with it.

    A file with other hard links (an installed head's backbone, linked to the
    ``--model`` directory's public weights) keeps its source's mode and is skipped.
    """
    wrong = {}
    for name, mode in modes(root).items():
        path = root / name
        if path.is_file() and path.stat().st_nlink > 1:
            continue
        wanted = 0o700 if path.is_dir() else 0o600
        if mode != wanted:
            wrong[name] = oct(mode)
    return wrong
