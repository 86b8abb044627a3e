"""Free space on the data dir's file system, and the watermark below which we refuse data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

FreeBytes = Callable[[], int]


def free_bytes_of(path: Path) -> FreeBytes:
    """A function returning the bytes available to us on ``path``'s file system."""
    return lambda: shutil.disk_usage(path).free


class DiskGuard:
    """Answers "may we write N more bytes?" against ``min_free_bytes``."""

    def __init__(self, free_bytes: FreeBytes, min_free_bytes: int):
        self._free_bytes = free_bytes
        self.min_free_bytes = min_free_bytes

    def free(self) -> int:
        return self._free_bytes()

    def below_watermark(self, incoming: int = 0) -> bool:
        return self.free() - incoming < self.min_free_bytes
