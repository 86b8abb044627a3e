import numpy as np
import onnxruntime as ort
import pytest
import torch

from ftlct.export.head_onnx import (
    HeadWeightsError,
    head_kind,
    head_onnx_bytes,
    numpy_head_logits,
)
from ftlct.export.heads import head_from_arrays, head_to_arrays, make_head


def _random_head_arrays(kind, n_classes, seed):
    head = make_head(kind, n_classes, seed=seed)
    with torch.no_grad():
        head.dense[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
        head.dense[-1].bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed + 1))
    return head.eval(), head_to_arrays(head)


@pytest.mark.parametrize(("kind", "n_classes"), [("linear", 2), ("linear", 4), ("mlp", 3)])
def test_onnx_head_built_without_torch_matches_torch_head(kind, n_classes):
    head, arrays = _random_head_arrays(kind, n_classes, seed=n_classes)
    embedding = np.random.default_rng(1).uniform(0, 6, (5, 1280)).astype(np.float32)
    session = ort.InferenceSession(head_onnx_bytes(arrays), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"embedding": embedding})[0]
    with torch.no_grad():
        torch_logits = head(torch.from_numpy(embedding)).numpy()
    assert onnx_logits.shape == (5, n_classes)
    assert np.abs(onnx_logits - torch_logits).max() <= 1e-4
    assert np.abs(numpy_head_logits(arrays, embedding) - torch_logits).max() <= 1e-4
    assert head_kind(arrays) == kind


def test_untrained_head_is_uniform():
    arrays = head_to_arrays(make_head("mlp", 4))
    logits = numpy_head_logits(arrays, np.ones((2, 1280), dtype=np.float32))
    assert np.allclose(logits, 0.0)


def test_arrays_round_trip_through_torch():
    _, arrays = _random_head_arrays("mlp", 2, seed=3)
    again = head_to_arrays(head_from_arrays(arrays))
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"dense.0.weight": np.zeros((2, 8))}, "needs weight and bias"),
        ({"dense.0.weight": np.zeros((2, 8)), "dense.0.bias": np.zeros(3)}, "do not fit"),
        ({"dense.1.weight": np.zeros((2, 8)), "dense.1.bias": np.zeros(2)}, "numbered 0..n-1"),
        ({"fc.weight": np.zeros((2, 8))}, "unexpected head tensor"),
        (
            {
                "dense.0.weight": np.zeros((4, 8)),
                "dense.0.bias": np.zeros(4),
                "dense.1.weight": np.zeros((2, 5)),
                "dense.1.bias": np.zeros(2),
            },
            "previous gives 4",
        ),
        ({"dense.0.weight": np.full((2, 8), np.nan), "dense.0.bias": np.zeros(2)}, "non-finite"),
    ],
)
def test_malformed_head_arrays_are_refused(arrays, message):
    with pytest.raises(HeadWeightsError, match=message):
        head_onnx_bytes(arrays)
