"""The element walk reads the same header as pydicom, or leaves the file to pydicom.

The property every test here leans on: wherever ``scan_header`` answers, ``parse_header``
(pydicom, every value converted) accepts the same bytes and gives the same fields. The
walk may decline (None) anything; it may never accept what pydicom refuses or read a
field differently.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ftlct.agent.store.header import HeaderError, parse_header, read_header, scan_header
from tests.agent.dicom_files import ct_instance, garbage_part10, part10_bytes
from tests.agent.dicom_mutations import dataset_offset, elements, fuzz_cases

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHARED_CQ500 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cq500-series"


def agrees_with_pydicom(data: bytes) -> bool:
    """True if the walk declined or read what pydicom reads; raises AssertionError if not."""
    scanned = scan_header(data)
    if scanned is None:
        return False
    try:
        parsed = parse_header(data)
    except HeaderError as exc:
        raise AssertionError(f"the walk accepted what pydicom refuses: {exc}") from None
    assert scanned == parsed
    return True


def ct_with(**changes) -> bytes:
    ds = ct_instance()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return part10_bytes(ds)


def ct_with_raw(tag: int, vr: str, value: bytes) -> bytes:
    """CT_small with one element's value bytes exactly as given (pydicom would not set them)."""
    ds = ct_instance()
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return part10_bytes(ds)


def test_reads_a_ct_instance_as_pydicom_does_with_every_field_the_index_keeps():
    ds = ct_instance(instance_number=7)
    ds.Manufacturer = "ACME "
    ds.ManufacturerModelName = "Scanner 9"
    ds.ConvolutionKernel = ["B30f", "SOFT"]
    ds.KVP = "120"
    ds.SliceThickness = "1.25"
    data = part10_bytes(ds)
    header = scan_header(data)
    assert header is not None
    assert header == parse_header(data)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.series_uid == ds.SeriesInstanceUID
    assert (header.instance_number, header.rows, header.columns) == (7, ds.Rows, ds.Columns)
    assert (header.manufacturer, header.kernel, header.kvp) == ("ACME", "B30f/SOFT", 120.0)
    assert header.slice_thickness_mm == 1.25


def test_reads_a_file_through_a_memory_map_the_same_as_its_bytes(tmp_path):
    data = ct_with(InstanceNumber=3)
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    assert scan_header(path) == scan_header(data) == parse_header(path)


def test_reads_implicit_vr_little_endian():
    ds = ct_instance()
    for tag in [element.tag for element in ds if element.tag.is_private]:
        del ds[tag]
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = part10_bytes(ds)
    assert agrees_with_pydicom(data)


@pytest.mark.parametrize(
    ("why", "data"),
    [
        ("multi-valued modality", ct_with(Modality=["CT", "MR"])),
        ("non-ASCII manufacturer", ct_with(Manufacturer="Médical")),
        ("instance number not an integer", ct_with_raw(0x00200013, "IS", b"1.5 ")),
        ("KVP not a number", ct_with_raw(0x00180060, "DS", b"high")),
        ("multi-valued KVP", ct_with(KVP=["120", "140"])),
        ("no DICM prefix", b"\0" * 200),
        ("too short", b"DICM"),
    ],
)
def test_declines_what_pydicom_must_interpret(why, data):
    assert scan_header(data) is None, why
    # and the caller still gets pydicom's answer, whatever it is
    try:
        assert read_header(data) == parse_header(data)
    except HeaderError:
        with pytest.raises(HeaderError):
            parse_header(data)


def _with_element(data: bytes, element: bytes, before_tag: int) -> bytes:
    """``element`` inserted before the first top-level element whose tag is ``before_tag`` or
    later (explicit VR little endian)."""
    at = min(
        start
        for start, _vr, _tell, tag in elements(data, ExplicitVRLittleEndian)
        if tag >= before_tag
    )
    return data[:at] + element + data[at:]


@pytest.mark.parametrize(
    ("why", "element", "tag"),
    [
        ("a US value of 3 bytes", b"\x18\x00\x10\x11US\x03\x00abc", 0x00181110),
        ("an IS value that overflows", b"\x20\x00\x12\x00IS\x06\x00-1e400", 0x00200012),
        ("a UN element", b"\x18\x00\x10\x10UN\x00\x00\x02\x00\x00\x00ab", 0x00181010),
        ("an unknown VR", b"\x18\x00\x10\x10ZZ\x02\x00ab", 0x00181010),
        ("an element past the end", b"\x18\x00\x10\x10LO\xff\xff", 0x00181010),
    ],
)
def test_an_element_pydicom_might_refuse_sends_the_file_to_pydicom(why, element, tag):
    data = _with_element(ct_with(), element, tag)
    assert scan_header(data) is None, why


def test_a_sequence_with_a_broken_item_is_left_to_pydicom():
    # (0008,1140) Referenced Image Sequence, defined length, one item holding a 3-byte US
    item_body = b"\x18\x00\x10\x11US\x03\x00abc"
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(item_body)) + item_body
    sequence = b"\x08\x00\x40\x11SQ\x00\x00" + struct.pack("<I", len(item)) + item
    data = _with_element(ct_with(), sequence, 0x00081140)
    assert scan_header(data) is None
    with pytest.raises(HeaderError):
        parse_header(data)


def test_well_formed_nested_sequences_are_walked_not_declined():
    leaf = b"\x08\x00\x00\x01SH\x02\x00X "
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + leaf + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    sequence = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\0\0\0\0"
    data = _with_element(ct_with(), sequence, 0x0040A730)
    assert agrees_with_pydicom(data)


def test_not_dicom_at_all_is_still_refused_with_pydicoms_reason():
    data = garbage_part10(b"\x00\x01garbage that is no dataset" * 10)
    with pytest.raises(HeaderError, match="not a DICOM instance"):
        read_header(data)


def test_every_fuzz_case_is_declined_or_read_as_pydicom_reads_it():
    cases = fuzz_cases(seed=3, rounds=1)
    answered = sum(agrees_with_pydicom(case.data) for case in cases)
    # the walk is used for most well-formed files, not declined wholesale
    assert answered >= len(cases) // 4, (answered, len(cases))


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_to_the_header_never_makes_the_walk_disagree(seed):
    rng = random.Random(seed)
    ds = ct_instance()
    ds.ConvolutionKernel = ["B30f", "SOFT"]
    ds.KVP = "120"
    clean = part10_bytes(ds)
    start = dataset_offset(clean)
    pixels = clean.find(b"\xe0\x7f\x10\x00")
    answered = 0
    for _ in range(400):
        data = bytearray(clean)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(start, pixels)
            if rng.random() < 0.5:
                data[at] ^= 1 << rng.randrange(8)
            else:
                data[at] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(start, len(data))]
        answered += agrees_with_pydicom(bytes(data))
    assert answered > 0


@pytest.mark.shared_data
def test_the_real_cq500_series_is_read_by_the_walk_as_pydicom_reads_it():
    if not SHARED_CQ500.is_dir():
        pytest.skip(f"needs the CQ500 series in {SHARED_CQ500}")
    files = sorted(SHARED_CQ500.rglob("*.dcm"))[:40]
    assert files
    for path in files:
        assert scan_header(path) is not None, path
        assert scan_header(path) == parse_header(path)


def test_a_missing_or_tiny_file_is_left_to_pydicom_which_refuses_it(tmp_path):
    tiny = tmp_path / "tiny.dcm"
    tiny.write_bytes(b"DICM")
    for path in (tmp_path / "missing.dcm", tiny):
        assert scan_header(path) is None
        with pytest.raises(HeaderError):
            read_header(path)
