"""The inference engine: one immutable snapshot, atomic swaps, no torch on the edge."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ftlct.agent.inference.engine import InferenceEngine, ModelError
from ftlct.export.head_onnx import numpy_head_logits, softmax
from tests.agent.dicom_files import CT_SMALL


def random_head(seed: int, dim: int = 1280, classes: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense.0.weight": rng.normal(0, 0.05, (classes, dim)).astype(np.float32),
        "dense.0.bias": rng.normal(0, 0.5, classes).astype(np.float32),
    }


@pytest.fixture(scope="module")
def two_heads(model_dir, tmp_path_factory):
    """Two model dirs sharing the backbone, with different heads and versions."""
    root = tmp_path_factory.mktemp("heads")
    heads = {"v-a": random_head(1), "v-b": random_head(2)}
    dirs = {v: model_dir.with_head(root / v, arrays, v).path for v, arrays in heads.items()}
    return dirs, heads


def test_concurrent_inference_never_fails_or_mixes_versions_during_swaps(two_heads):
    dirs, heads = two_heads
    engine = InferenceEngine.load(dirs["v-a"], threads=1)
    embeddings = np.random.default_rng(3).normal(0, 1, (8, 1280)).astype(np.float32)
    expected = {v: softmax(numpy_head_logits(h, embeddings)) for v, h in heads.items()}
    stop = threading.Event()
    seen: dict[str, int] = {"v-a": 0, "v-b": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def infer_forever() -> None:
        while not stop.is_set():
            try:
                snapshot = engine.current
                probs = snapshot.probabilities(embeddings)
                if not np.allclose(probs, expected[snapshot.version], atol=1e-5):
                    errors.append(f"{snapshot.version}: output of another head")
                with lock:
                    seen[snapshot.version] += 1
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=infer_forever) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(20):
            engine.swap(dirs["v-b" if i % 2 == 0 else "v-a"])
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert seen["v-a"] > 0 and seen["v-b"] > 0
    assert engine.current.version == "v-a"


def test_head_swap_reuses_the_backbone_session(two_heads):
    dirs, _ = two_heads
    engine = InferenceEngine.load(dirs["v-a"], threads=1)
    before = engine.current
    swapped = []
    engine.on_swap(lambda old, new: swapped.append((old.version, new.version)))
    after = engine.swap(dirs["v-b"])
    assert after.backbone is before.backbone
    assert after.head is not before.head
    assert swapped == [("v-a", "v-b")]


def test_a_failed_swap_keeps_the_current_model(two_heads, tmp_path):
    import shutil

    dirs, _ = two_heads
    engine = InferenceEngine.load(dirs["v-a"], threads=1)
    broken = tmp_path / "broken"
    shutil.copytree(dirs["v-b"], broken)
    (broken / "head.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="sha256"):
        engine.swap(broken)
    with pytest.raises(ModelError, match="not a model directory"):
        engine.swap(tmp_path / "nothing-here")
    assert engine.current.version == "v-a"


def test_embed_and_classify_a_real_slice(model_dir):
    from ftlct.export.preprocessing import preprocess_file

    snapshot = InferenceEngine.load(model_dir.path, threads=1).current
    vectors = snapshot.embed(preprocess_file(CT_SMALL, snapshot.spec))
    assert vectors.shape == (1, 1280) and vectors.dtype == np.float32
    probs = snapshot.probabilities(vectors)
    assert probs.shape == (1, 2)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_batch_is_embedded_a_few_images_a_call_in_order(model_dir):
    from ftlct.agent.inference.engine import BACKBONE_CALL_IMAGES

    snapshot = InferenceEngine.load(model_dir.path, threads=1).current
    rng = np.random.default_rng(3)
    size = snapshot.spec.input_size
    images = rng.normal(0, 1, (2 * BACKBONE_CALL_IMAGES + 1, 3, size, size)).astype(np.float32)
    together = snapshot.embed(images)
    alone = np.concatenate([snapshot.embed(images[i : i + 1]) for i in range(len(images))])
    assert together.shape == (len(images), snapshot.embedding_dim)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    assert np.abs(together[0] - together[-1]).max() > 1e-3  # distinct images, kept in order


def test_edge_inference_never_imports_torch(model_dir):
    """The serve process's modules, a model load and a real inference, in a fresh interpreter."""
    code = (
        "import sys\n"
        "import ftlct.agent.cli, ftlct.agent.service, ftlct.agent.inference.worker\n"
        "import ftlct.agent.inference.offline, ftlct.agent.reporting.delivery\n"
        "from ftlct.agent.inference.engine import InferenceEngine\n"
        "from ftlct.export.preprocessing import preprocess_file\n"
        f"snap = InferenceEngine.load({str(model_dir.path)!r}, 1).current\n"
        f"snap.probabilities(snap.embed(preprocess_file({str(CT_SMALL)!r}, snap.spec)))\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
