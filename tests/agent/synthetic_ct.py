"""Small synthetic CT series for federation tests: two classes a frozen ImageNet backbone separates.

"normal": a soft-tissue disc (40 HU) in air; "abnormal": the same disc with a
bright bone-density block (1200 HU). Each series carries patient fields
(name, id, birth date, accession number) so tests can prove none of them
leaves the agent, and device fields (manufacturer, model, kernel, kVp, slice
thickness) for the scanner profile of the twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SIZE = 64
PHI = {
    "PatientName": "ZZTESTPATIENT^QUENTIN",
    "PatientID": "PIDQX7731",
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACCQX99812",
}


@dataclass
class SyntheticSeries:
    label: str
    study_uid: str
    series_uid: str
    paths: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)


def _pixels(label: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    hu = np.full((SIZE, SIZE), -1000.0)
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.4) ** 2
    hu[disc] = 40.0
    if label == "abnormal":
        hu[18:40, 14:34] = 1200.0
    hu += rng.normal(0, 15, size=hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.int16)  # stored values, intercept -1024


def write_series(
    folder: Path,
    label: str,
    n_slices: int = 3,
    seed: int = 0,
    manufacturer: str = "ACME Medical",
    model_name: str = "Tomo 64",
    kernel: str = "B30f",
    kvp: float = 120.0,
    thickness: float = 5.0,
    phi: dict | None = None,
) -> SyntheticSeries:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series = SyntheticSeries(label, generate_uid(), generate_uid())
    for index in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID = series.study_uid
        ds.SeriesInstanceUID = series.series_uid
        ds.Modality = "CT"
        ds.InstanceNumber = index + 1
        for key, value in (phi or PHI).items():
            setattr(ds, key, value)
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = model_name
        ds.ConvolutionKernel = kernel
        ds.KVP = kvp
        ds.SliceThickness = thickness
        ds.ImagePositionPatient = [0, 0, float(index) * thickness]
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = _pixels(label, rng).tobytes()
        path = folder / f"{label}-{series.series_uid[-8:]}-{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        series.paths.append(path)
        series.sop_uids.append(ds.SOPInstanceUID)
    return series


def write_study_set(folder: Path, per_class: int, n_slices: int = 3, seed: int = 0, **device):
    """``per_class`` series of each label, each its own study, in one folder."""
    out = []
    for i in range(per_class):
        for j, label in enumerate(("normal", "abnormal")):
            out.append(
                write_series(folder, label, n_slices, seed=seed * 1000 + i * 2 + j, **device)
            )
    return out


def labels_csv(path: Path, series: list[SyntheticSeries], level: str = "study") -> Path:
    lines = ["uid,label"]
    for s in series:
        uid = s.study_uid if level == "study" else s.series_uid
        lines.append(f"{uid},{s.label}")
    path.write_text("\n".join(lines) + "\n")
    return path
