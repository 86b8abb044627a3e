"""Small DICOM inputs for agent tests, built from pydicom's bundled test files (no downloads)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = PYDICOM_TEST_FILES / "CT_small.dcm"
MR_SMALL = PYDICOM_TEST_FILES / "MR_small.dcm"
SECURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def ct_instance(
    series_uid: str | None = None,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    patient_name: str = "DOE^JANE",
    patient_id: str = "PID-0042",
) -> Dataset:
    """A copy of CT_small with the UIDs (and patient) given, everything else as in the file."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = instance_number
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """The dataset as a Part-10 stream (what ``event.encoded_dataset()`` hands the store)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def garbage_part10(body: bytes, sop_class: str = SECURE_SOP_CLASS) -> bytes:
    """Valid file meta followed by ``body`` as the dataset: a sender's broken payload."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=True)
    buffer.write(body)
    return buffer.getvalue()


def write_series(folder: Path, n: int, series_uid: str | None = None) -> list[Path]:
    """``n`` CT_small copies of one series, as files."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    paths = []
    for index in range(n):
        ds = ct_instance(series_uid, study_uid, instance_number=index + 1)
        path = folder / f"slice{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def with_changes(ds: Dataset, **changes) -> Dataset:
    other = copy.deepcopy(ds)
    for key, value in changes.items():
        setattr(other, key, value)
    return other
