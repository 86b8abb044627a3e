"""Stored instances -> slice embeddings, decoding the next batch while onnxruntime runs this one.

Decoding and preprocessing go through ``ftlct.export.preprocessing`` only (the
one implementation the model was exported with). onnxruntime and libjpeg-turbo
(lossless JPEG, ``export/jpeg_lossless.py``) release the GIL, so a small decode
pool beside the ORT call keeps both cores busy on a 2-core box. pylibjpeg-libjpeg
(still used for JPEG-LS and lossy JPEG) held it when measured: two threads decoding
the CQ500 series were no faster than one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ftlct.agent.inference.embeddings import EmbeddingStore
from ftlct.agent.inference.engine import ModelSnapshot
from ftlct.agent.metrics import AgentMetrics
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.export.preprocessing import PreprocessingError, read_slices_from_bytes, to_model_input
from ftlct.protocol.errors import is_exit

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The agent is stopping; the caller puts its work back in the queue."""


@dataclass
class Prepared:
    instance: dict
    images: np.ndarray | None  # float32 [frames, 3, S, S]
    error: str | None


@dataclass
class EmbedOutcome:
    vectors: dict[str, np.ndarray]  # SOP Instance UID -> [frames, D]
    errors: dict[str, str]  # SOP Instance UID -> why it has no embedding


class SliceEmbedder:
    def __init__(
        self,
        store: InstanceStore,
        embeddings: EmbeddingStore,
        batch_size: int,
        decode_threads: int,
        metrics: AgentMetrics,
        thread_setup: Callable[[], None] | None = None,
    ):
        """``thread_setup`` runs first on each decode thread (e.g. to lower its priority)."""
        self.store = store
        self.embeddings = embeddings
        self.batch_size = batch_size
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(
            decode_threads, thread_name_prefix="decode", initializer=thread_setup
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, instance: dict, snapshot: ModelSnapshot) -> Prepared:
        if instance.get("rows") is None:  # header had no image attributes: SR, KO, PR...
            return Prepared(instance, None, "no pixel data")
        try:
            data = self.store.path_of(instance).read_bytes()
            images = to_model_input(read_slices_from_bytes(data), snapshot.spec)
        except PreprocessingError as exc:
            return Prepared(instance, None, str(exc))
        except BaseException as exc:  # a corrupt stream may fail anywhere in pydicom or a codec,
            if is_exit(exc):  # a Rust codec's panic included
                raise
            return Prepared(instance, None, f"{type(exc).__name__}: {exc}")
        if len(images) == 0:
            return Prepared(instance, None, "no frames")
        return Prepared(instance, images, None)

    def embed(
        self,
        snapshot: ModelSnapshot,
        instances: list[dict],
        should_stop: Callable[[], bool] = lambda: False,
        run_options: ort.RunOptions | None = None,
    ) -> EmbedOutcome:
        """Embed ``instances`` with ``snapshot``'s backbone and persist the vectors.

        ``run_options``: the onnxruntime calls use them (their ``terminate`` cancels a call).
        """
        outcome = EmbedOutcome({}, {})
        chunks = [
            instances[i : i + self.batch_size] for i in range(0, len(instances), self.batch_size)
        ]
        if not chunks:
            return outcome
        ahead = self._submit(chunks[0], snapshot)
        for index in range(len(chunks)):
            current = ahead
            if index + 1 < len(chunks):
                ahead = self._submit(chunks[index + 1], snapshot)
            prepared = [future.result() for future in current]
            if should_stop():
                for future in ahead:
                    future.cancel()
                raise Interrupted()
            self._embed_chunk(snapshot, prepared, outcome, run_options)
        return outcome

    def _submit(self, chunk: list[dict], snapshot: ModelSnapshot) -> list[Future]:
        return [self._pool.submit(self._prepare, instance, snapshot) for instance in chunk]

    def _embed_chunk(
        self, snapshot: ModelSnapshot, prepared: list[Prepared], outcome, run_options
    ) -> None:
        good = [p for p in prepared if p.images is not None]
        for p in prepared:
            if p.error is not None:
                outcome.errors[p.instance["sop_instance_uid"]] = p.error
                self.embeddings.mark_unembeddable(p.instance, p.error)
        if not good:
            return
        images = np.concatenate([p.images for p in good])
        vectors = np.concatenate(
            [
                snapshot.embed(images[i : i + self.batch_size], run_options)
                for i in range(0, len(images), self.batch_size)
            ]
        )
        self.metrics.slices_embedded.inc(len(vectors))
        start = 0
        batch = []
        for p in good:
            count = len(p.images)
            batch.append((p.instance, vectors[start : start + count]))
            outcome.vectors[p.instance["sop_instance_uid"]] = vectors[start : start + count]
            start += count
        self.embeddings.put_many(batch, snapshot.backbone_sha256)
