"""The file a C-STORE's dataset is written to in ``incoming/`` while it arrives.

``ReceivedFile`` hashes what it writes (the store needs not read the file
again for its sha256) and starts the kernel's write-back of each fragment as
it is written (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux; advisory):
the fsync the store makes before the success status then finds most of the
data on its way to the disk already. Durability still comes from that fsync.

Anything left in ``incoming/`` was never acknowledged: a partial dataset is
removed when its association closes (``receive_limits``), and after a crash
``InstanceStore.recover`` empties the folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

SYNC_FILE_RANGE_WRITE = 2  # start write-back of the range's dirty pages; do not wait

Writeback = Callable[[int, int, int], object]
MadeFile = tuple[int, str]  # (descriptor open for writing, path)


def _kernel_writeback() -> Writeback | None:
    """``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)``, or None where the C
    library has none (it is Linux's); advisory, so its result is ignored."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: its C library
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return lambda fd, offset, length: call(fd, offset, length, SYNC_FILE_RANGE_WRITE)


START_WRITEBACK = _kernel_writeback()


def make_file(directory: Path | str) -> MadeFile:
    """A new, empty, private (0600) file in ``directory``."""
    return tempfile.mkstemp(suffix=".dcm", dir=directory)


class ReceivedFile:
    """One dataset's file, hashed and written back as written.

    Offers what pynetdicom uses of its ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush`` and ``close``; the sha256 of everything written is ``sha256()``.
    """

    def __init__(self, made: MadeFile, writeback: Writeback | None = START_WRITEBACK):
        self._fd, self.name = made
        self._hash = hashlib.sha256()
        self._writeback = writeback
        self.size = 0
        self.file = self  # pynetdicom flushes through .file

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)  # releases the GIL for all but tiny pieces
        while view:
            view = view[os.write(self._fd, view) :]
        if self._writeback is not None:
            self._writeback(self._fd, self.size, len(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered in the process: each write went to the kernel."""

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def sha256(self) -> str:
        return self._hash.hexdigest()
