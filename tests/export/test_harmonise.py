"""Scanner harmonisation inside backbone.onnx: what it removes, what it records, old directories."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ftlct.export.adabn import estimate
from ftlct.export.build import build_model_dir
from ftlct.export.harmonise import NO_HARMONISATION, Harmonisation, Harmoniser, gaussian_kernel
from ftlct.export.model_dir import HARMONISER_SCOPE, ModelDir
from ftlct.export.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Slice, to_model_input
from ftlct.export.verify import ct_phantom, verify_model_dir


def _grey_picture(seed: int = 0, size: int = 96) -> np.ndarray:
    """A grey picture in [0, 1] with structure and noise (the shape of an 8-bit CT export)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).astype(np.float32) * 0.6
    lungs = ((yy - 0.5) ** 2 + (np.abs(xx - 0.5) - 0.17) ** 2 < 0.02).astype(np.float32) * 0.45
    return np.clip(0.1 + body - lungs + rng.normal(0, 0.02, (size, size)), 0, 1).astype(np.float32)


def _normalised(grey: np.ndarray) -> torch.Tensor:
    chw = np.stack([grey] * 3)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return torch.from_numpy(((chw - mean) / std)[None].astype(np.float32))


def _embed(model: ModelDir, grey: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model.backbone_path), providers=["CPUExecutionProvider"])
    batch = to_model_input([Slice(grey, is_hu=False)], model.preprocessing)
    return session.run(["embedding"], {"image": batch})[0][0]


@pytest.fixture(scope="module")
def plain_dir(imagenet_weights, tmp_path_factory):
    return build_model_dir(
        tmp_path_factory.mktemp("plain") / "m",
        imagenet_weights,
        ["a", "b"],
        harmonisation=NO_HARMONISATION,
    )


def test_standardising_removes_a_display_curves_contrast_and_offset():
    grey = _grey_picture()
    harmoniser = Harmoniser(Harmonisation(blur_sigma=0.0), IMAGENET_MEAN, IMAGENET_STD)
    flatter = 0.3 + 0.5 * grey  # another display curve's contrast and level
    with torch.no_grad():
        a, b = harmoniser(_normalised(grey)), harmoniser(_normalised(flatter))
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(_normalised(grey), _normalised(flatter), atol=0.1)


def test_the_blur_damps_noise_and_keeps_a_flat_image_flat():
    harmoniser = Harmoniser(
        Harmonisation(blur_sigma=1.0, standardise=False), IMAGENET_MEAN, IMAGENET_STD
    )
    rng = np.random.default_rng(1)
    noisy = np.clip(0.5 + rng.normal(0, 0.05, (64, 64)), 0, 1).astype(np.float32)
    with torch.no_grad():
        out = harmoniser(_normalised(noisy))
        flat = harmoniser(_normalised(np.full((64, 64), 0.4, np.float32)))
    assert float(out[0, 0].std()) < 0.5 * float(_normalised(noisy)[0, 0].std())
    assert torch.allclose(flat, _normalised(np.full((64, 64), 0.4, np.float32)), atol=1e-5)
    assert float(gaussian_kernel(1.0).sum()) == pytest.approx(1.0)


def test_a_harmonised_backbone_embeds_a_flatter_display_of_a_slice_closer_to_the_slice(
    model_dir, plain_dir
):
    grey = _grey_picture(seed=2, size=224)
    flatter = 0.25 + 0.6 * grey

    def shift(model):
        a, b = _embed(model, grey), _embed(model, flatter)
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    assert shift(model_dir) < 0.2 * shift(plain_dir)


def test_the_manifest_records_the_harmonisation_and_verify_checks_it(model_dir, tmp_path):
    entry = model_dir.manifest["backbone"]["harmonisation"]
    assert (entry["blur_sigma"], entry["standardise"]) == (1.0, True)
    assert verify_model_dir(model_dir.path).ok
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in model_dir.path.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backbone"]["harmonisation"]["blur_sigma"] = 2.0  # not what the graph does
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify_model_dir(copy)
    assert not report.ok and report.first_failure.name.startswith("backbone parity")


def test_a_model_directory_built_before_harmonisation_verifies_without_it(plain_dir, tmp_path):
    manifest = json.loads((plain_dir.path / "manifest.json").read_text())
    assert manifest["backbone"]["harmonisation"]["standardise"] is False
    del manifest["backbone"]["harmonisation"]  # what older builds wrote: no entry at all
    copy = tmp_path / "old"
    copy.mkdir()
    for item in plain_dir.path.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert verify_model_dir(copy).ok
    assert Harmonisation.from_json(None) == NO_HARMONISATION


def test_the_blur_is_not_mistaken_for_a_batch_normed_convolution(model_dir, plain_dir):
    harmonised = model_dir.manifest["backbone"]["batch_norm"]
    assert [e["conv"] for e in harmonised] == [
        e["conv"] for e in plain_dir.manifest["backbone"]["batch_norm"]
    ]
    graph = onnx.load(str(model_dir.backbone_path)).graph
    blur = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith(HARMONISER_SCOPE)]
    assert len(blur) == 2 and not {n.name for n in blur} & {e["conv_node"] for e in harmonised}
    batch = to_model_input([ct_phantom(seed=4), ct_phantom(seed=6)], model_dir.preprocessing)
    stats = estimate(model_dir, [batch], up_to_stage=0)  # AdaBN still finds its convolutions
    assert len(stats) == len([e for e in harmonised if e["stage"] == 0])


@pytest.mark.parametrize("sigma", [-0.5, 9.0, float("nan")])
def test_a_blur_outside_its_range_is_refused(sigma):
    with pytest.raises(ValueError, match="blur sigma"):
        Harmonisation(blur_sigma=sigma)


def test_int8_keeps_the_harmoniser_the_first_block_the_last_conv_and_the_pooling_float(
    model_dir,
):
    from ftlct.export.quantize import POOLING_OPS, kept_float_nodes

    graph = onnx.load(str(model_dir.backbone_path)).graph
    harmoniser = [n.name for n in graph.node if n.name.startswith(HARMONISER_SCOPE)]
    network = [n for n in graph.node if not n.name.startswith(HARMONISER_SCOPE)]
    convs = [n.name for n in network if n.op_type == "Conv"]
    pooling = {n.name for n in network if n.op_type in POOLING_OPS}
    kept = set(kept_float_nodes(model_dir.backbone_path))
    assert set(harmoniser) <= kept and pooling <= kept
    assert {"Conv", "ReduceMean", "Clip"} <= {n.op_type for n in graph.node if n.name in harmoniser}
    # the stem and MobileNetV2's first block (depthwise, projection), then the last Conv
    assert [c for c in convs if c in kept] == [*convs[:3], convs[-1]]
    assert convs[0].startswith("/features.0/") and convs[2].startswith("/features.1/")
    first_block = {n.name for n in network if n.name.startswith(("/features.0/", "/features.1/"))}
    assert {n for n in first_block if "Constant" not in n} <= kept
    assert {"GlobalAveragePool", "GlobalMaxPool", "Concat"} <= {
        n.op_type for n in network if n.name in pooling
    }
