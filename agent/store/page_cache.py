"""Sync a stored file, then release its pages from the page cache (``storage.release_page_cache``).

A received instance is written once and read back at most once more, by the
embedder, while the agent receives the next ones. Left in the page cache, every
instance adds ~0.5 MB that the kernel has to find room for: each new write needs
fresh pages, and on a box whose memory has not all been in use yet (a new
machine, a VM whose host hands back pages the guest freed) a never-touched page
is the expensive kind. On the 2-core bench VM, writing a 530 KB slice into such
pages took 1.3-2.4 ms against ~0.5 ms into pages a released file gave back
(``make bench``'s ingest goes 300 slices a pass). Releasing the pages once the
file is durable keeps the writes in recycled memory, and keeps the page cache of
a small edge box for what is read again: the model, the index, the embeddings.

The file is fsynced first, as before: its pages are clean then and
``POSIX_FADV_DONTNEED`` drops them without I/O. The release is advice: where the
system has no ``posix_fadvise`` or refuses it, the file stays cached and nothing
else changes. The embedder then reads the instance from the disk instead of
memory, off the path of the C-STORE's response.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

Advise = Callable[[int, int, int, int], None]

_FADVISE: Advise | None = getattr(os, "posix_fadvise", None)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 4)


def sync_and_release(path: str | os.PathLike, advise: Advise | None = _FADVISE) -> None:
    """fsync ``path`` (a file or a directory); a regular file's pages then leave the cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if advise is not None and stat.S_ISREG(os.fstat(fd).st_mode):
            with contextlib.suppress(OSError):  # advice: a refusal changes nothing stored
                advise(fd, 0, 0, _DONTNEED)
    finally:
        os.close(fd)
