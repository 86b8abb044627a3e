"""``ftl-agent infer``: classify files on disk with the same model path as the serve process.

DICOM files are grouped by Series Instance UID and aggregated like a received
series; every picture (PNG, JPG, ...) is its own result. Directories are
walked recursively; there, files that are neither DICOM nor pictures are
ignored, while such a file named explicitly is reported as an error row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from ftlct.agent.inference.aggregation import aggregate
from ftlct.agent.inference.engine import ModelSnapshot
from ftlct.agent.settings import InferenceSettings
from ftlct.export.preprocessing import IMAGE_SUFFIXES, is_dicom_file, preprocess_file
from ftlct.protocol.errors import is_exit


@dataclass
class InputGroup:
    key: str  # series UID, or the picture's path
    kind: str  # "series" or "image"
    files: list[Path] = field(default_factory=list)


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() == ".dcm" or is_dicom_file(path)


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[dict]]:
    """Files to classify, and error rows for named files we cannot use."""
    files, errors = [], []
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    candidate = Path(root) / name
                    if candidate.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(candidate):
                        files.append(candidate)
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(path):
                files.append(path)
            else:
                errors.append({"input": str(path), "error": "neither DICOM nor a picture"})
        else:
            errors.append({"input": str(path), "error": "no such file or directory"})
    return files, errors


def group(files: list[Path]) -> tuple[list[InputGroup], list[dict]]:
    groups: dict[str, InputGroup] = {}
    errors = []
    for path in files:
        if path.suffix.lower() in IMAGE_SUFFIXES and not _is_dicom(path):
            groups[str(path)] = InputGroup(str(path), "image", [path])
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            series_uid = str(header.get("SeriesInstanceUID", "") or "") or f"file:{path}"
        except Exception as exc:
            errors.append({"input": str(path), "error": f"not readable as DICOM: {exc}"})
            continue
        groups.setdefault(series_uid, InputGroup(series_uid, "series")).files.append(path)
    return list(groups.values()), errors


def _prepare(path: Path, snapshot: ModelSnapshot) -> np.ndarray | str:
    try:
        return preprocess_file(path, snapshot.spec)
    except BaseException as exc:  # one bad slice, or a codec's panic, must not sink the series
        if is_exit(exc):
            raise
        return f"{path.name}: {exc}"


def infer_group(
    snapshot: ModelSnapshot, item: InputGroup, settings: InferenceSettings, pool: ThreadPoolExecutor
) -> dict:
    """Decode a chunk of files in ``pool`` while the backbone runs the previous one."""
    errors: list[str] = []
    embeddings: list[np.ndarray] = []
    size = settings.batch_size
    chunks = [item.files[i : i + size] for i in range(0, len(item.files), size)]
    ahead = [pool.submit(_prepare, path, snapshot) for path in chunks[0]]
    for index in range(len(chunks)):
        current = ahead
        if index + 1 < len(chunks):
            ahead = [pool.submit(_prepare, path, snapshot) for path in chunks[index + 1]]
        prepared = [future.result() for future in current]
        errors += [p for p in prepared if isinstance(p, str)]
        images = [p for p in prepared if not isinstance(p, str) and len(p)]
        if images:
            embeddings.append(snapshot.embed(np.concatenate(images)))
    row = {
        "input": str(
            item.files[0].parent if item.kind == "series" and len(item.files) > 1 else item.files[0]
        ),
        "kind": item.kind,
        "series_uid": item.key
        if item.kind == "series" and not item.key.startswith("file:")
        else None,
        "n_files": len(item.files),
        "model_version": snapshot.version,
        "errors": errors,
    }
    if not embeddings:
        return {
            **row,
            "n_slices": 0,
            "label": None,
            "probabilities": None,
            "error": "no usable image",
        }
    vectors = np.concatenate(embeddings)
    score = aggregate(
        snapshot.probabilities(vectors),
        snapshot.labels,
        settings.aggregation,
        settings.top_k,
        settings.negative_label,
    )
    return {
        **row,
        "n_slices": len(vectors),
        "label": score.label,
        "probabilities": score.probabilities,
        "aggregation": score.rule,
    }


def infer_paths(
    paths: list[Path], snapshot: ModelSnapshot, settings: InferenceSettings
) -> list[dict]:
    """One row per series / picture, plus error rows for inputs that could not be used."""
    files, errors = expand(paths)
    groups, group_errors = group(files)
    with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:
        rows = [infer_group(snapshot, item, settings, pool) for item in groups]
    return rows + [{**e, "label": None, "probabilities": None} for e in errors + group_errors]
