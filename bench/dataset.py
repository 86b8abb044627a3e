"""A labelled image folder: one sub-folder per class, optionally a ``manifest.csv``.

``manifest.csv`` (``path,label[,group,...]``) wins when present: paths are
relative to the folder, ``group`` joins images that must stay on one side of
any split (a patient, a source paper). Without it every file under a class
folder is one item and its own group. Classes are sorted by name, so class
indices do not depend on the order of the files.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlct.export.preprocessing import IMAGE_SUFFIXES, is_dicom_file

MANIFEST = "manifest.csv"
DICOM_SUFFIXES = {".dcm", ".dicom"}


class DatasetError(ValueError):
    """A data folder that cannot be used (missing, empty, one class, bad manifest rows)."""


@dataclass(frozen=True)
class LabelledImages:
    root: Path
    classes: tuple[str, ...]
    paths: tuple[str, ...]  # relative to root, POSIX separators
    labels: np.ndarray  # [N] int64 index into classes
    groups: tuple[str, ...]  # split unit of each item

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> Path:
        return self.root / self.paths[index]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts, strict=True)}


def _is_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    return suffix == "" and path.stat().st_size >= 132 and is_dicom_file(path)


def _from_manifest(root: Path) -> list[tuple[str, str, str]]:
    rows = []
    with open(root / MANIFEST, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{root / MANIFEST}: needs the columns path,label[,group]")
        for line, row in enumerate(reader, start=2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise DatasetError(f"{root / MANIFEST} line {line}: empty path or label")
            if Path(path).is_absolute() or ".." in Path(path).parts:
                raise DatasetError(f"{root / MANIFEST} line {line}: path must stay inside {root}")
            if not (root / path).is_file():
                raise DatasetError(f"{root / MANIFEST} line {line}: {path} does not exist")
            group = (row.get("group") or "").strip() or f"file:{path}"
            rows.append((path, label, group))
    return rows


def _from_folders(root: Path) -> list[tuple[str, str, str]]:
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                file = Path(dirpath) / name
                if name.startswith(".") or not _is_image(file):
                    continue
                relative = file.relative_to(root).as_posix()
                rows.append((relative, class_dir.name, f"file:{relative}"))
    return sorted(rows)


def load_dataset(root: str | os.PathLike) -> LabelledImages:
    """Read ``root`` (manifest or class folders); ``DatasetError`` if it is not a usable data set."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    rows = _from_manifest(root) if (root / MANIFEST).is_file() else _from_folders(root)
    if not rows:
        raise DatasetError(
            f"{root}: no images (expected one sub-folder of PNG/JPG/DICOM per class)"
        )
    classes = tuple(sorted({label for _, label, _ in rows}))
    if len(classes) < 2:
        raise DatasetError(f"{root}: needs at least two classes, found {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    return LabelledImages(
        root=root,
        classes=classes,
        paths=tuple(path for path, _, _ in rows),
        labels=np.array([index[label] for _, label, _ in rows], dtype=np.int64),
        groups=tuple(group for _, _, group in rows),
    )
