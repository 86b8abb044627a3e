"""A model directory whose served backbone is the static QDQ int8 copy of its float one.

``ftl-export build --int8 --calibration PATH...`` writes ``backbone.int8.onnx``
(``quantize_backbone_static``, calibrated on the CT slices given) and points
the manifest's ``backbone.file``/``sha256`` at it, so the agent, which loads
whatever the manifest names, serves int8 with no change of its own. The float
file stays, named in ``backbone.float`` (``file``, ``sha256``): ``ftl-export
verify`` checks it against torch as before and the int8 copy against it
within ``TOLERANCE``. ``backbone.quantization`` records how it was made.

The backbone sha256 is the int8 file's: a federation pins it, so int8 and
float sites never mix embeddings (they are different feature spaces).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ftlct.export.files import atomic_write_text, sha256_file
from ftlct.export.model_dir import MANIFEST, ModelDir, ModelDirError

INT8_FILE = "backbone.int8.onnx"
CALIBRATION_LIMIT = 256  # slices: every slice of a CQ500 series (239), as ftl-bench perf calibrates
# Embedding cosine, int8 vs float, per CT slice. ftl-bench perf measured min 0.995 and
# mean 0.997 over all 746 covid-ct images (calibrated on CQ500), well inside these bounds.
TOLERANCE = {"min_cosine": 0.9, "mean_cosine": 0.95}


class CalibrationError(ValueError):
    """No usable CT slice among the calibration paths."""


def calibration_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The DICOM/PNG/JPG files named, or found under the folders named, in sorted order."""
    from ftlct.export.preprocessing import IMAGE_SUFFIXES, is_dicom_file

    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise CalibrationError(f"{path}: no such file or folder")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(p)]
    return found


def calibration_inputs(
    paths: Sequence[str | os.PathLike], spec, limit: int = CALIBRATION_LIMIT
) -> np.ndarray:
    """Model input ``[N, 3, S, S]`` of at most ``limit`` slices spread evenly over the files."""
    from ftlct.export.preprocessing import PreprocessingError, preprocess_file

    files = calibration_files(paths)
    if not files:
        raise CalibrationError("no DICOM, PNG or JPG file among the calibration paths")
    step = max(1, len(files) // limit)
    parts = []
    for file in files[::step][:limit]:
        try:
            parts.append(preprocess_file(file, spec))
        except PreprocessingError:
            continue  # a localizer or a non-image instance: nothing to calibrate on
    if not parts:
        raise CalibrationError(f"none of {len(files)} calibration files has a usable slice")
    return np.concatenate(parts)[:limit].astype(np.float32)


def float_backbone_path(model: ModelDir) -> Path:
    """The float backbone: ``backbone.float.file`` of an int8 model, else the backbone itself."""
    entry = model.manifest["backbone"].get("float")
    return model.path / entry["file"] if entry else model.backbone_path


def make_int8(model: ModelDir, calibration: np.ndarray) -> ModelDir:
    """Quantize ``model``'s float backbone and make the int8 copy the one served (in place)."""
    import onnxruntime

    from ftlct.export.quantize import quantize_backbone_static

    if "float" in model.manifest["backbone"]:
        raise ModelDirError(f"{model.path}: the backbone is already int8")
    source = model.backbone_path
    done = quantize_backbone_static(source, model.path / INT8_FILE, calibration)
    manifest = json.loads(json.dumps(model.manifest))
    backbone = manifest["backbone"]
    backbone["float"] = {"file": backbone["file"], "sha256": backbone["sha256"]}
    backbone["file"] = INT8_FILE
    backbone["sha256"] = sha256_file(model.path / INT8_FILE)
    backbone["quantization"] = {
        **done,
        "onnxruntime": onnxruntime.__version__,
        "verify_tolerance": TOLERANCE,
    }
    int8 = ModelDir(model.path, manifest)
    low, mean = int8_parity(int8, calibration[:16])
    if low < TOLERANCE["min_cosine"] or mean < TOLERANCE["mean_cosine"]:
        (model.path / INT8_FILE).unlink(missing_ok=True)
        raise ModelDirError(
            f"int8 backbone too far from float on the calibration slices (cosine min {low:.3f}, "
            f"mean {mean:.3f}; needs {TOLERANCE['min_cosine']}, {TOLERANCE['mean_cosine']})"
        )
    atomic_write_text(model.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return int8


def int8_parity(model: ModelDir, images: np.ndarray) -> tuple[float, float]:
    """(min, mean) cosine between the int8 and the float embeddings of ``images``."""
    import onnxruntime as ort

    def embed(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0].astype(np.float64)

    a, b = embed(model.backbone_path), embed(float_backbone_path(model))
    cosine = (a * b).sum(1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )
    return float(cosine.min()), float(cosine.mean())
