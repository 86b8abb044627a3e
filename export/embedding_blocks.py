"""Where each tap x pooling block sits in a manifest's embedding, without torch.

``backbone.output`` of a multi-layer model directory says ``taps``,
``tap_names``, ``tap_channels``, ``pooling`` and ``layout`` (``LAYOUT``: for
each tap in order, its channels pooled by each pooling in order). Readers
that look at slices of the vector (the agent's twin feature statistics) get
the blocks from here, so the layout is spelled out in one place beside the
writer (``backbones.embedding_layout``).
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUT = "for each tap in order, its channels pooled by each pooling in order"


@dataclass(frozen=True)
class EmbeddingBlock:
    tap: str  # the stage's module name, e.g. "features.10"
    pooling: str  # "mean" or "max"
    start: int  # columns [start, stop) of the embedding
    stop: int

    @property
    def name(self) -> str:
        return f"{self.tap} {self.pooling}"


def embedding_blocks(output: dict) -> tuple[EmbeddingBlock, ...] | None:
    """The blocks of ``backbone.output`` in vector order; None when the manifest does not
    describe them consistently (an earlier single-layer manifest, another layout, a ``dim``
    that is not the blocks' sum)."""
    names, channels, pooling = (output.get(k) for k in ("tap_names", "tap_channels", "pooling"))
    if output.get("layout") != LAYOUT:
        return None
    if not all(isinstance(v, list) and v for v in (names, channels, pooling)):
        return None
    if len(names) != len(channels) or not all(isinstance(n, str) for n in (*names, *pooling)):
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        return None
    blocks, start = [], 0
    for tap, width in zip(names, channels, strict=True):
        for pool in pooling:
            blocks.append(EmbeddingBlock(tap, pool, start, start + width))
            start += width
    if output.get("dim") != start or len({b.name for b in blocks}) != len(blocks):
        return None
    return tuple(blocks)
