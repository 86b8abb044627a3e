"""The received dataset's file: hashed, and its write-back started, as it is written."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from ftlct.agent.dicom.received_file import (
    START_WRITEBACK,
    ReceivedFile,
    make_file,
)


def test_the_received_file_hashes_exactly_what_it_wrote_and_starts_writing_each_piece_back(
    tmp_path,
):
    ranges = []
    received = ReceivedFile(
        make_file(tmp_path), writeback=lambda fd, offset, length: ranges.append((offset, length))
    )
    for piece in (b"\x00" * 128, b"DICM", memoryview(b"x" * 200_001), bytearray(b"end")):
        received.write(piece)
    received.file.flush()
    received.close()
    received.close()  # pynetdicom closes it after the handler; twice is harmless
    data = Path(received.name).read_bytes()
    assert Path(received.name).parent == tmp_path
    assert stat.S_IMODE(Path(received.name).stat().st_mode) == 0o600
    assert received.size == len(data) == 128 + 4 + 200_001 + 3
    assert received.sha256() == hashlib.sha256(data).hexdigest()
    assert ranges == [(0, 128), (128, 4), (132, 200_001), (200_133, 3)]  # the whole file, once


def test_the_kernel_write_back_call_accepts_a_real_file(tmp_path):
    if START_WRITEBACK is None:
        pytest.skip("no sync_file_range in this C library")
    received = ReceivedFile(make_file(tmp_path))
    received.write(b"x" * 65536)
    received.close()
    with open(received.name, "rb") as handle:
        assert START_WRITEBACK(handle.fileno(), 0, 65536) == 0  # O_RDONLY is enough for it
