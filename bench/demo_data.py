"""DICOM studies for the local demo: real CT pictures wrapped as Secondary Capture, or phantoms.

A PACS sends DICOM, so the demo does too. Where ``../shared/data/covid-ct`` is
present its PNG/JPG slices become one-instance Secondary Capture studies (8-bit,
so the agent skips the HU step, as it does for any picture). Without it, each
study is a small synthetic CT series (HU phantoms; ``abnormal`` ones carry a
dense block) so that the demo runs on a fresh clone too.

Patient fields are fixed placeholders: the demo never invents people.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

PLACEHOLDER_PATIENT = {"PatientName": "DEMO^ANONYMOUS", "PatientID": "DEMO0000"}
# The default model says normal/abnormal; covid-ct's classes map onto it.
COVID_CT_LABELS = {"noncovid": "normal", "covid": "abnormal"}


@dataclass
class DemoStudy:
    label: str
    study_uid: str
    series_uid: str
    paths: list[Path] = field(default_factory=list)
    source: str = ""


def _base_dataset(sop_class: str, study_uid: str, series_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = number
    for key, value in PLACEHOLDER_PATIENT.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    return ds


def picture_study(picture: Path, label: str, folder: Path) -> DemoStudy:
    """One PNG/JPG CT slice as a one-instance Secondary Capture study."""
    study = DemoStudy(label, generate_uid(), generate_uid(), source=picture.name)
    with Image.open(picture) as image:
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
    ds = _base_dataset(SecondaryCaptureImageStorage, study.study_uid, study.series_uid, 1)
    ds.Modality = "CT"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = grey.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = grey.tobytes()
    path = folder / f"{study.series_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    study.paths.append(path)
    return study


def _phantom(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0)
    hu[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2] = 40.0
    if label == "abnormal":
        top, left = rng.integers(size // 4, size // 2, size=2)
        hu[top : top + size // 3, left : left + size // 3] = 1200.0
    hu += rng.normal(0, 15, size=hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def phantom_study(
    label: str, folder: Path, rng: np.random.Generator, slices: int = 3, size: int = 64
) -> DemoStudy:
    """A synthetic CT series, ``size`` px square (HU via rescale intercept -1024), new UIDs."""
    study = DemoStudy(label, generate_uid(), generate_uid(), source="phantom")
    for index in range(slices):
        ds = _base_dataset(CTImageStorage, study.study_uid, study.series_uid, index + 1)
        ds.Modality = "CT"
        ds.Manufacturer = "ftl-ct demo phantom"
        ds.SliceThickness = 5.0
        ds.KVP = 120.0
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = _phantom(label, size, rng).tobytes()
        path = folder / f"{study.series_uid}-{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        study.paths.append(path)
    return study


@dataclass
class DemoSplit:
    """Per-site training studies and one held-out test set no site trains on."""

    train: dict[str, list[DemoStudy]]
    test: list[DemoStudy]
    source: str


def _covid_rows(root: Path) -> list[tuple[Path, str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return [
            (root / row["path"], COVID_CT_LABELS[row["label"]], row.get("group") or row["path"])
            for row in csv.DictReader(handle)
            if row["label"] in COVID_CT_LABELS
        ]


def covid_ct_split(
    root: Path, folder: Path, sites: list[str], per_site: int, test: int, seed: int
) -> DemoSplit:
    """Group-aware and class-balanced: a source paper or patient (``group``) lands on one side
    and one site only, and each side gets about half of its studies from each class."""
    by_class: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path, label, group in _covid_rows(root):
        by_class[label][group].append(path)
    rng = random.Random(seed)
    test_rows: list[tuple[Path, str]] = []
    site_rows: dict[str, list[tuple[Path, str]]] = {s: [] for s in sites}
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        rng.shuffle(groups)
        quota = {"test": test // 2, **{s: per_site // 2 for s in sites}}
        taken = dict.fromkeys(quota, 0)
        for group in groups:
            open_sides = [side for side in quota if taken[side] < quota[side]]
            if not open_sides:
                break
            side = min(open_sides, key=lambda k: taken[k] / quota[k])
            rows = [(p, label) for p in by_class[label][group]][: quota[side] - taken[side]]
            taken[side] += len(rows)
            (test_rows if side == "test" else site_rows[side]).extend(rows)
    folder.mkdir(parents=True, exist_ok=True)
    return DemoSplit(
        train={s: [picture_study(p, label, folder) for p, label in site_rows[s]] for s in sites},
        test=[picture_study(p, label, folder) for p, label in test_rows],
        source=f"{root} (real CT pictures as Secondary Capture)",
    )


def phantom_split(folder: Path, sites: list[str], per_site: int, test: int, seed: int) -> DemoSplit:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def studies(n: int) -> list[DemoStudy]:
        return [phantom_study(("normal", "abnormal")[i % 2], folder, rng) for i in range(n)]

    return DemoSplit(
        train={s: studies(per_site) for s in sites},
        test=studies(test),
        source="synthetic CT phantoms (../shared/data/covid-ct not found)",
    )


def labels_csv(path: Path, studies: Iterable[DemoStudy]) -> Path:
    """``uid,label`` keyed by StudyInstanceUID, as ``ftl-agent label import`` takes it."""
    lines = ["uid,label", *(f"{s.study_uid},{s.label}" for s in studies)]
    path.write_text("\n".join(lines) + "\n")
    return path
