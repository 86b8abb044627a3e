"""``ftl-export verify``: hashes, ONNX structure and torch-vs-onnxruntime parity.

The torch reference is rebuilt from the directory's own ``backbone.safetensors``
and ``head.safetensors`` (whose hashes are checked first), so a model that was
exported wrongly (train-mode batch norm, a bad graph) or altered after export
fails here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

from ftlct.export.backbones import pooled_backbone_from_manifest
from ftlct.export.heads import head_from_arrays
from ftlct.export.int8_backbone import TOLERANCE as INT8_TOLERANCE
from ftlct.export.int8_backbone import float_backbone_path, int8_parity
from ftlct.export.mobilenet_v2 import WeightsError
from ftlct.export.model_dir import ModelDir, ModelDirError
from ftlct.export.preprocessing import PreprocessingError, Slice, preprocess_file, to_model_input

# max |ort - torch| allowed, relative to the reference's largest magnitude when that is > 1:
# max-pooled taps without a ReLU reach 10-20, where float32 rounding alone is ~1e-5 absolute
TOLERANCE = 1e-4


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    max_abs_diff: float | None = None


@dataclass
class VerifyReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def to_json(self) -> dict:
        return {"path": self.path, "ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def ct_phantom(size: int = 512, seed: int = 0) -> Slice:
    """A synthetic axial CT slice in HU (air, body, soft tissue, bone, lung), for inputs with structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    hu = np.full((size, size), -1000.0)
    hu[(xx / 0.85) ** 2 + (yy / 0.7) ** 2 < 1] = 40.0
    for cx in (-0.4, 0.4):
        hu[((xx - cx) / 0.3) ** 2 + (yy / 0.45) ** 2 < 1] = -850.0
    hu[(xx**2 + (yy - 0.55) ** 2) < 0.01] = 900.0
    return Slice(hu + rng.normal(0, 15, hu.shape), is_hu=True)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _scale(reference: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_model_dir(
    path: str | os.PathLike, samples: Sequence[str | os.PathLike] = ()
) -> VerifyReport:
    report = VerifyReport(str(path))
    try:
        model = ModelDir.load(path)
    except ModelDirError as exc:
        report.checks.append(Check("manifest", False, str(exc)))
        return report
    report.checks.append(
        Check("manifest", True, f"version {model.version}, labels {','.join(model.labels)}")
    )

    problems = model.problems()
    report.checks.append(Check("hashes", not problems, "; ".join(problems) or "all files match"))
    if problems:
        return report

    try:
        # torch is the float backbone's reference; an int8 backbone is checked against it below
        backbone_sess = _session(float_backbone_path(model))
        head_sess = _session(model.head_path)
    except Exception as exc:
        report.checks.append(Check("onnx load", False, str(exc).splitlines()[0]))
        return report
    io_ok = (
        [i.name for i in backbone_sess.get_inputs()] == ["image"]
        and [o.name for o in backbone_sess.get_outputs()] == ["embedding"]
        and [i.name for i in head_sess.get_inputs()] == ["embedding"]
        and [o.name for o in head_sess.get_outputs()] == ["logits"]
    )
    report.checks.append(Check("onnx io names", io_ok, "image->embedding, embedding->logits"))
    if not io_ok:
        return report

    try:
        weights_file = model.path / model.manifest["backbone"]["weights"]
        backbone = pooled_backbone_from_manifest(
            model.manifest["backbone"], load_file(str(weights_file))
        )
        head = head_from_arrays(model.head_weights()).eval()
    except (KeyError, WeightsError, ModelDirError, ValueError) as exc:
        report.checks.append(Check("torch reference", False, str(exc)))
        return report

    spec = model.preprocessing
    size = spec.input_size
    inputs = {
        "random": np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32),
        "ct phantom": to_model_input([ct_phantom()], spec),
    }
    for sample in samples:
        try:
            inputs[f"sample {Path(sample).name}"] = preprocess_file(sample, spec)[:4]
        except PreprocessingError as exc:
            report.checks.append(Check(f"sample {Path(sample).name}", False, str(exc)))

    for label, batch in inputs.items():
        with torch.no_grad():
            ref_embedding = backbone(torch.from_numpy(batch)).numpy()
            ref_logits = head(torch.from_numpy(ref_embedding)).numpy()
        embedding = backbone_sess.run(["embedding"], {"image": batch})[0]
        logits = head_sess.run(["logits"], {"embedding": embedding})[0]
        if embedding.shape != (batch.shape[0], model.embedding_dim):
            report.checks.append(
                Check(f"backbone {label}", False, f"embedding shape {embedding.shape}")
            )
            continue
        for part, ours, ref in (
            ("backbone", embedding, ref_embedding),
            ("head", logits, ref_logits),
        ):
            diff = _max_diff(ours, ref)
            scale = _scale(ref)
            report.checks.append(
                Check(
                    f"{part} parity ({label})",
                    diff <= TOLERANCE * scale,
                    f"max |ort - torch| = {diff:.2e} (limit {TOLERANCE * scale:.1e})",
                    diff,
                )
            )
    if "quantization" in model.manifest["backbone"]:
        report.checks.append(_int8_check(model, inputs))
    return report


def _int8_check(model: ModelDir, inputs: dict[str, np.ndarray]) -> Check:
    """The int8 backbone against the float one on the CT inputs (random noise is no CT slice)."""
    ct = [batch for label, batch in inputs.items() if label != "random"]
    try:
        low, mean = int8_parity(model, np.concatenate(ct))
    except Exception as exc:  # onnxruntime raises its own types
        return Check("int8 backbone", False, f"cannot run: {str(exc).splitlines()[0]}")
    tolerance = INT8_TOLERANCE
    return Check(
        "int8 backbone",
        low >= tolerance["min_cosine"] and mean >= tolerance["mean_cosine"],
        f"embedding cosine to float: min {low:.4f} (>= {tolerance['min_cosine']}), "
        f"mean {mean:.4f} (>= {tolerance['mean_cosine']})",
    )
