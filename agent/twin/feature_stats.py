"""The twin's feature statistics: how the site's scanner looks to the frozen backbone.

Dose, reconstruction kernel and display curve shift what the backbone sees,
so the cloud can tell a site whose scanner is unlike the others' from these
numbers alone. They are computed from embeddings the agent already stored
(no backbone run): over the most recent slices of the current backbone, per
tap x pooling block of the manifest's layout, the mean over slices of the
block's average value and its (population) standard deviation over slices.
Nothing is built below a minimum of slices and of studies, so no single study
can be read back, and nothing when the layout does not describe the vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.settings import TwinSettings
from ftlct.export.embedding_blocks import EmbeddingBlock
from ftlct.export.model_dir import ModelDir
from ftlct.protocol.twin_state import FeatureBlock, FeatureStats

SIGNIFICANT_DIGITS = 4
BACKBONE_PREFIX = 12  # hex characters of the backbone's sha256: enough to tell backbones apart


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    return float(f"{value:.{digits}g}")


def feature_statistics(
    vectors: np.ndarray, blocks: Sequence[EmbeddingBlock], backbone_sha256: str
) -> FeatureStats | None:
    """``vectors`` ``[N, D]`` -> the statistics of each block; None without slices or when
    ``D`` is not the layout's width."""
    if len(vectors) == 0 or not blocks or vectors.shape[1] != blocks[-1].stop:
        return None
    values = np.asarray(vectors, dtype=np.float64)
    out = []
    for block in blocks:
        averages = values[:, block.start : block.stop].mean(axis=1)  # one per slice
        out.append(
            FeatureBlock(
                tap=block.tap,
                pooling=block.pooling,
                mean=significant(float(averages.mean())),
                std=significant(float(averages.std())),
            )
        )
    return FeatureStats(backbone=backbone_sha256[:BACKBONE_PREFIX], slices=len(values), blocks=out)


def recent_feature_stats(
    store: EmbeddingStore, model: ModelDir, settings: TwinSettings
) -> FeatureStats | None:
    """The statistics over the site's ``feature_window`` most recent slices of ``model``'s
    backbone; None below the minimum or for a manifest without a usable layout."""
    blocks = model.embedding_blocks
    if blocks is None:
        return None
    studies, vectors = store.recent(
        model.backbone_sha256, model.embedding_dim, settings.feature_window
    )
    if len(vectors) < settings.feature_min_slices:
        return None
    if len(set(studies)) < settings.feature_min_studies:
        return None
    return feature_statistics(vectors, blocks, model.backbone_sha256)
