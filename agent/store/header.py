"""The few header fields the index keeps, read from the received bytes without pixel decoding."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ftlct.agent.store.header_scan import scan_fields

# Values larger than this are left unread in a file (pydicom's defer_size): a peer's
# 1 GB private element before the pixels must not become 1 GB of memory per association.
DEFER_BYTES = 1 << 20


class HeaderError(ValueError):
    """The bytes are not a DICOM dataset we can read."""


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    modality: str | None
    transfer_syntax: str | None
    instance_number: int | None
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    # Device fields for the scanner's twin (aggregated per series; never patient data).
    manufacturer: str | None = None
    model_name: str | None = None
    kernel: str | None = None
    kvp: float | None = None
    slice_thickness_mm: float | None = None


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def _int(ds, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None  # a malformed optional field must not refuse the instance


def _float(ds, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _joined(ds, keyword: str) -> str | None:
    """A possibly multi-valued text element as one string (ConvolutionKernel may be e.g. 2)."""
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, str | bytes):
        return _text(ds, keyword)
    parts = [str(v).strip() for v in value if str(v).strip()]
    return "/".join(parts) or None


def _convert_values(ds: Dataset) -> None:
    """Convert every value read (corrupt elements raise here); deferred large ones stay unread."""
    for raw in ds.elements():
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            continue  # deferred: larger than DEFER_BYTES
        element = ds[raw.tag]
        if element.VR == "SQ":
            for item in element.value:
                _convert_values(item)
        else:
            _ = element.value


def read_header(source: bytes | Path) -> InstanceHeader:
    """The header of a Part-10 file or byte stream; ``HeaderError`` if it is not DICOM.

    The element walk (``header_scan``) answers for the files it fully understands and
    pydicom (``parse_header``) for the rest, so both refuse and read the same."""
    header = scan_header(source)
    return header if header is not None else parse_header(source)


def scan_header(source: bytes | Path) -> InstanceHeader | None:
    """The header by the element walk alone; None where it leaves the file to pydicom."""
    fields = scan_fields(source)
    return None if fields is None else InstanceHeader(**fields)


def parse_header(source: bytes | Path) -> InstanceHeader:
    """Parse a Part-10 file or byte stream with pydicom up to the pixel data, converting
    every value. A file is read element by element, large values deferred, so memory stays
    small whatever the file's size."""
    try:
        if isinstance(source, bytes | bytearray):
            ds = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True)
        else:
            ds = pydicom.dcmread(source, stop_before_pixels=True, defer_size=DEFER_BYTES)
        _convert_values(ds)
        meta = getattr(ds, "file_meta", None)
        header = InstanceHeader(
            sop_class_uid=_text(ds, "SOPClassUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            modality=_text(ds, "Modality"),
            transfer_syntax=_text(meta, "TransferSyntaxUID") if meta is not None else None,
            instance_number=_int(ds, "InstanceNumber"),
            number_of_frames=_int(ds, "NumberOfFrames"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            manufacturer=_text(ds, "Manufacturer"),
            model_name=_text(ds, "ManufacturerModelName"),
            kernel=_joined(ds, "ConvolutionKernel"),
            kvp=_float(ds, "KVP"),
            slice_thickness_mm=_float(ds, "SliceThickness"),
        )
    except InvalidDicomError as exc:
        raise HeaderError(f"not DICOM: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise HeaderError(f"unreadable header: {type(exc).__name__}: {exc}") from exc
    identifying = (
        header.sop_class_uid,
        header.sop_instance_uid,
        header.study_uid,
        header.series_uid,
    )
    if not any(identifying):
        # pydicom reads almost any bytes as *some* dataset; without one identifying UID
        # it is not an instance we can make sense of.
        raise HeaderError("no SOP, study or series UID found: not a DICOM instance")
    return header
