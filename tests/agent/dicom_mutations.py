"""Hostile C-STORE payloads for the DICOM fuzz: pydicom's corpus and seeded mutations of it.

Every case is a Part-10 file whose file meta stays valid (a sender needs it to
name the SOP class, instance and transfer syntax of the request) while the
dataset after it is mutated:

    corpus        a file of pydicom's test corpus as it is
    truncated     the dataset cut at a random point
    huge_length   one element's length field set to a huge value (or undefined)
    wrong_vr      one element's VR replaced (explicit VR only): lengths shift
    bit_flip      a few random bytes of the dataset flipped
    no_pixels     Pixel Data removed, or shorter than Rows x Columns says
    odd_syntax    the meta names another transfer syntax than the dataset's encoding
                  (one the agent accepts, or one it does not propose)
    uid_mismatch  the request announces another SOP Instance than the dataset holds
    no_uids       Study/Series Instance UID removed
    garbage       random bytes as the dataset
    deep_nesting  sequences nested hundreds deep
    big_element   a multi-MiB private element before the pixels
    resend        a stored SOP Instance again: same bytes, or other bytes

Cases other than ``corpus`` get fresh UIDs (a seed re-encoded), so each acknowledged
case can be checked byte for byte in the store. A seeded RNG picks the mutations.
"""

from __future__ import annotations

import copy
import io
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    generate_uid,
)

from tests.agent.dicom_files import PYDICOM_TEST_FILES, garbage_part10

SEEDS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPGExtended.dcm",
    "image_dfl.dcm",
    "rtdose_1frame.dcm",
    "test-SR.dcm",
    "liver_1frame.dcm",
)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
SOME_VRS = [b"OB", b"SQ", b"UN", b"US", b"FD", b"AT", b"UT", b"ZZ", b"\x00\x00", b"DS", b"PN"]
HUGE = [0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, 0xFFFF]
NOT_ACCEPTED_SYNTAX = "1.2.840.10008.1.2.4.100"  # MPEG2: the agent does not propose it
SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    NOT_ACCEPTED_SYNTAX,
]


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    data: bytes  # a Part-10 file: preamble, valid meta, the (mutated) dataset
    sop_class: str
    sop_instance: str  # as the request announces it
    syntax: str

    @property
    def dataset(self) -> bytes:
        """The bytes a C-STORE carries: everything after the file meta."""
        return self.data[dataset_offset(self.data) :]


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts: after preamble, 'DICM' and the meta group (its length says)."""
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def part10(meta: FileMetaDataset, dataset: bytes) -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=True)
    buffer.write(dataset)
    return buffer.getvalue()


def meta_of(sop_class: str, sop_instance: str, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    return meta


def fresh(ds: Dataset) -> Dataset:
    """A copy with new Study/Series/SOP Instance UIDs (meta kept in step)."""
    other = copy.deepcopy(ds)
    other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    return other


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def case_of(name: str, kind: str, ds: Dataset, data: bytes, **meta) -> Case:
    sop_class = meta.get("sop_class", str(ds.SOPClassUID))
    sop_instance = meta.get("sop_instance", str(ds.SOPInstanceUID))
    syntax = meta.get("syntax", str(ds.file_meta.TransferSyntaxUID))
    if meta:  # a re-announced request: rewrite the meta, keep the dataset bytes
        data = part10(meta_of(sop_class, sop_instance, syntax), data[dataset_offset(data) :])
    return Case(name, kind, data, sop_class, sop_instance, syntax)


def elements(data: bytes, syntax: str) -> list[tuple[int, bytes, int, int]]:
    """``(element start, VR, value offset, tag)`` of every top-level dataset element."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=False)
    implicit = syntax == ImplicitVRLittleEndian
    found = []
    for raw in ds.elements():
        tell = getattr(raw, "value_tell", None)
        if tell is None:
            continue
        vr = (raw.VR or "UN").encode()
        header = 8 if implicit or vr not in LONG_VRS else 12  # tag, [VR,] length
        start = tell - header
        found.append((start, vr, tell, int(raw.tag)))
    return found


def mutate(rng: random.Random, name: str, ds: Dataset, round_index: int = 0) -> list[Case]:
    """The structural and random mutations of one seed (each on a fresh copy)."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    deflated = syntax == DeflatedExplicitVRLittleEndian
    big = syntax == ExplicitVRBigEndian
    implicit = syntax == ImplicitVRLittleEndian
    cases: list[Case] = []

    def add(kind: str, base: Dataset, data: bytes, **meta) -> None:
        label = f"{name}:{kind}:{round_index}.{len(cases)}"  # unique over every round
        cases.append(case_of(label, kind, base, data, **meta))

    for _ in range(8):
        base = fresh(ds)
        data = encode(base)
        start = dataset_offset(data)
        add("truncated", base, data[: rng.randrange(start, len(data))])
    for _ in range(6):
        base = fresh(ds)
        data = bytearray(encode(base))
        flips = rng.randrange(1, 8)
        for _ in range(flips):
            at = rng.randrange(dataset_offset(data), len(data))
            data[at] ^= 1 << rng.randrange(8)
        add("bit_flip", base, bytes(data))
    if not deflated:
        for _ in range(6):
            base = fresh(ds)
            data = bytearray(encode(base))
            start, vr, tell, _tag = rng.choice(elements(bytes(data), syntax))
            short = not implicit and vr not in LONG_VRS
            value = rng.choice(HUGE) & (0xFFFF if short else 0xFFFFFFFF)
            fmt = (">" if big else "<") + ("H" if short else "I")
            width = 2 if short else 4
            data[tell - width : tell] = struct.pack(fmt, value)
            add("huge_length", base, bytes(data))
        if not implicit:
            for _ in range(4):
                base = fresh(ds)
                data = bytearray(encode(base))
                start, _vr, _tell, _tag = rng.choice(elements(bytes(data), syntax))
                data[start + 4 : start + 6] = rng.choice(SOME_VRS)
                add("wrong_vr", base, bytes(data))
    for other in rng.sample([s for s in SYNTAXES if s != syntax], 3):
        base = fresh(ds)
        add("odd_syntax", base, encode(base), syntax=str(other))
    if "PixelData" in ds:
        base = fresh(ds)
        del base.PixelData
        add("no_pixels", base, encode(base))
        if not base.file_meta.TransferSyntaxUID.is_compressed:
            base = fresh(ds)
            base.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
            add("no_pixels", base, encode(base))
    base = fresh(ds)
    add("uid_mismatch", base, encode(base), sop_instance=generate_uid())
    base = fresh(ds)
    del base.SeriesInstanceUID
    add("no_uids", base, encode(base))
    base = fresh(ds)
    add(
        "garbage",
        base,
        part10(base.file_meta, rng.randbytes(rng.randrange(1, 20_000))),
    )
    # a resend of the same bytes (a duplicate), then of other bytes (a conflict)
    base = fresh(ds)
    first = encode(base)
    add("resend", base, first)
    add("resend", base, first)
    changed = copy.deepcopy(base)
    changed.InstanceNumber = 999
    add("resend", changed, encode(changed))
    return cases


def nested_sequence(depth: int) -> bytes:
    """Content Sequence items nested ``depth`` deep, undefined lengths, explicit VR LE."""
    sequence = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    end_item = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    end_sequence = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    code_value = b"\x08\x00\x00\x01SH\x02\x00X "
    return (sequence + item) * depth + code_value + (end_item + end_sequence) * depth


def extra_cases(rng: random.Random) -> list[Case]:
    """Cases built from CT_small: deep nesting and a big element before the pixels."""
    ct = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    cases = []
    for depth in (20, 300, 5000):
        base = fresh(ct)
        data = encode(base)
        # in tag order: before the first element after Content Sequence (0040,A730)
        after = min(
            start
            for start, _vr, _tell, tag in elements(data, ExplicitVRLittleEndian)
            if tag > 0x0040A730
        )
        data = data[:after] + nested_sequence(depth) + data[after:]
        cases.append(case_of(f"CT_small:deep_nesting:{depth}", "deep_nesting", base, data))
    for megabytes in (2, 6):
        base = fresh(ct)
        base.add_new(0x00290010, "LO", "FUZZ")
        base.add_new(0x00291010, "OB", rng.randbytes(megabytes * 2**20))
        data = encode(base)
        cases.append(case_of(f"CT_small:big_element:{megabytes}", "big_element", base, data))
    return cases


def corpus_cases() -> list[Case]:
    """Every corpus file with a usable file meta, sent as it is on disk."""
    cases = []
    for path in sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            named = (
                meta.MediaStorageSOPClassUID,
                meta.MediaStorageSOPInstanceUID,
                meta.TransferSyntaxUID,
            )
            usable = data[128:132] == b"DICM" and all(named)
        except Exception:
            usable = False
        if not usable:  # no meta a sender could use: its bytes go as a dataset
            data = garbage_part10(data)
            meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
        name = path.relative_to(PYDICOM_TEST_FILES).as_posix()
        cases.append(
            Case(
                name,
                "corpus",
                data,
                str(meta.MediaStorageSOPClassUID),
                str(meta.MediaStorageSOPInstanceUID),
                str(meta.TransferSyntaxUID),
            )
        )
    return cases


def fuzz_cases(seed: int = 0, rounds: int = 1) -> list[Case]:
    """The corpus, then ``rounds`` passes of mutations over every seed file."""
    rng = random.Random(seed)
    cases = corpus_cases()
    for round_index in range(rounds):
        for name in SEEDS:
            path = PYDICOM_TEST_FILES / name
            if Path(path).is_file():
                cases.extend(mutate(rng, name, pydicom.dcmread(path), round_index))
    cases.extend(extra_cases(rng))
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


# Cases of ``fuzz_cases(seed=0)`` on which pylibjpeg-rle's Rust decoder panicked (a
# ``BaseException``): the full run found them killing the agent's inference thread. The CI
# slice sends them too (``codec_panic_cases``).
PANICKING_CASES = ("MR_small_RLE.dcm:bit_flip:1.13", "MR_small_RLE.dcm:bit_flip:2.12")


def codec_panic_cases() -> list[Case]:
    """``PANICKING_CASES``, made as the full run makes them."""
    rounds = 1 + max(int(name.rsplit(":", 1)[1].split(".")[0]) for name in PANICKING_CASES)
    by_name = {case.name: case for case in fuzz_cases(seed=0, rounds=rounds)}
    return [by_name[name] for name in PANICKING_CASES]
