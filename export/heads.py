"""Classification heads over the 1280-d embedding (torch; training and export only).

A head is a stack of dense layers with ReLU between them; its tensors are named
``dense.{i}.weight`` / ``dense.{i}.bias``, the layout ``head_onnx`` rebuilds
without torch. ``linear`` is one layer; ``mlp`` adds a hidden layer.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from ftlct.export.head_onnx import HEAD_KINDS, head_layers
from ftlct.export.mobilenet_v2 import EMBEDDING_DIM

MLP_HIDDEN = 256


class Head(nn.Module):
    def __init__(self, sizes: list[int], dropout: float = 0.0):
        super().__init__()
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = dropout

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = embedding
        for i, layer in enumerate(self.dense):
            if i:
                x = nn.functional.dropout(torch.relu(x), self.dropout, self.training)
            x = layer(x)
        return x


def make_head(
    kind: str,
    n_classes: int,
    embedding_dim: int = EMBEDDING_DIM,
    hidden: int = MLP_HIDDEN,
    dropout: float = 0.0,
    seed: int = 0,
) -> Head:
    """A fresh head. The output layer starts at zero, so an untrained head says 1/C for every class."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {n_classes}")
    sizes = [embedding_dim, n_classes] if kind == "linear" else [embedding_dim, hidden, n_classes]
    generator = torch.Generator().manual_seed(seed)
    head = Head(sizes, dropout)
    with torch.no_grad():
        for layer in head.dense[:-1]:
            bound = 1.0 / np.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.zero_()
        head.dense[-1].weight.zero_()
        head.dense[-1].bias.zero_()
    return head


def head_to_arrays(head: Head) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in head.state_dict().items()}


def head_from_arrays(arrays: dict[str, np.ndarray], dropout: float = 0.0) -> Head:
    """Rebuild a torch head from ``dense.{i}.*`` arrays (shapes checked by ``head_layers``)."""
    layers = head_layers(arrays)
    sizes = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    head = Head(sizes, dropout)
    head.load_state_dict(
        {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    )
    return head
