"""Which Conv node of ``backbone.onnx`` carries which batch norm (written at build time).

The exporter folds every eval-mode batch norm into the convolution before it
(``W' = W g / s``, ``b' = b - m g / s`` with ``s = sqrt(var + eps)``), which is
what makes inference fast, and leaves no BatchNormalization node behind. The
batch-norm parameters themselves stay in ``backbone.safetensors``. To
re-estimate the statistics at the edge without torch (``export/adabn.py``)
one must know which folded Conv belongs to which batch norm: this module
pairs them in execution order and checks every pair numerically against the
folded weights, so a wrong pairing fails the build instead of corrupting an
adaptation. The map goes into the manifest (``backbone.batch_norm``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from ftlct.export.model_dir import HARMONISER_SCOPE


class BatchNormMapError(ValueError):
    """The exported graph's convolutions do not match the network's (conv, batch norm) pairs."""


def conv_bn_pairs(net: nn.Module) -> list[tuple[str, str, float]]:
    """``(conv module name, batch-norm module name, eps)`` for each conv followed by a batch norm."""
    pairs = []
    previous = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            previous = name
        elif isinstance(module, nn.BatchNorm2d):
            if previous is None:
                raise BatchNormMapError(f"batch norm {name} follows no convolution")
            pairs.append((previous, name, float(module.eps)))
            previous = None
    return pairs


def batch_norm_map(onnx_bytes: bytes, net: nn.Module) -> list[dict]:
    """Pair the graph's Conv nodes (in order) with the network's (conv, BN) pairs; verify each."""
    graph = onnx.load_from_string(onnx_bytes).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # the harmoniser's blur (export/harmonise.py) is a fixed convolution with no batch norm
    convs = [
        n for n in graph.node if n.op_type == "Conv" and not n.name.startswith(HARMONISER_SCOPE)
    ]
    pairs = conv_bn_pairs(net)
    if len(convs) > len(pairs):
        raise BatchNormMapError(f"{len(convs)} Conv nodes but {len(pairs)} conv/BN pairs")
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    entries = []
    for node, (conv, bn, eps) in zip(convs, pairs, strict=False):
        folded_w = initializers.get(node.input[1])
        folded_b = initializers.get(node.input[2]) if len(node.input) > 2 else None
        if folded_w is None or folded_b is None:
            raise BatchNormMapError(f"{node.name}: weight or bias is not an initializer")
        gamma, beta = state[f"{bn}.weight"], state[f"{bn}.bias"]
        mean, var = state[f"{bn}.running_mean"], state[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + eps)
        expected_w = state[f"{conv}.weight"] * scale[:, None, None, None]
        expected_b = beta - mean * scale
        if expected_w.shape != folded_w.shape or not (
            np.allclose(folded_w, expected_w, rtol=1e-4, atol=1e-6)
            and np.allclose(folded_b, expected_b, rtol=1e-4, atol=1e-5)
        ):
            raise BatchNormMapError(f"{node.name} is not {conv} folded with {bn}")
        entries.append(
            {
                "conv_node": node.name,
                "weight": node.input[1],
                "bias": node.input[2],
                "conv": conv,
                "batch_norm": bn,
                "eps": eps,
            }
        )
    return entries
