"""The agent's embedding path against a bare onnxruntime session of the same ``backbone.onnx``.

- ``bare``: ``ort.InferenceSession`` with onnxruntime's defaults but the thread
  count, at batch 1, 8, 16 and 32: the best of these is the anchor;
- ``agent``: ``ModelSnapshot.embed`` from ``load_snapshot`` (the agent's session
  options) at the agent's batch size, timed in turns with the bare sessions;
- ``levers``: one session option changed at a time (spinning, graph optimisation
  level, memory arena, a non-contiguous input that onnxruntime must copy), to say
  where a gap comes from;
- ``pipeline``: the agent's ``SliceEmbedder`` over instances stored by its own
  ``InstanceStore`` (read, decode and preprocess in the decode pool while
  onnxruntime runs the previous batch), against decode alone and onnxruntime
  alone, which says how much of the decoding the overlap hides.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ftlct.bench.perf.measure import goal, interleaved, rate, ratio

BATCHES = (1, 8, 16, 32)
WORK = 32  # images per timed repetition, whatever the batch


def bare_session(path: Path, threads: int, **options) -> ort.InferenceSession:
    """onnxruntime's defaults, but ``intra_op_num_threads`` and the ``options`` given."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if "level" in options:
        so.graph_optimization_level = options["level"]
    if "arena" in options:
        so.enable_cpu_mem_arena = options["arena"]
    if "pattern" in options:
        so.enable_mem_pattern = options["pattern"]
    if "spinning" in options:
        so.add_session_config_entry("session.intra_op.allow_spinning", options["spinning"])
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _runner(session: ort.InferenceSession, images: np.ndarray, batch: int):
    name = session.get_inputs()[0].name
    return lambda: [session.run(None, {name: images[i : i + batch]}) for i in range(0, WORK, batch)]


def _work(inputs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.resize(inputs, (WORK, *inputs.shape[1:])).astype(np.float32))


def session_comparison(
    model, inputs: np.ndarray, threads: int, agent_batch: int, repeats: int
) -> dict:
    """Bare sessions at every batch vs the agent's snapshot at its batch, in turns."""
    from ftlct.agent.inference.engine import load_snapshot

    images = _work(inputs)
    bare = bare_session(model.backbone_path, threads)
    snapshot = load_snapshot(model.path, threads)
    alternatives = {f"bare_batch_{b}": _runner(bare, images, b) for b in BATCHES}
    alternatives["agent"] = lambda: [
        snapshot.embed(images[i : i + agent_batch]) for i in range(0, WORK, agent_batch)
    ]
    samples = interleaved(alternatives, repeats)
    figures = {name: rate(s, WORK, "images/s") for name, s in samples.items()}
    best = max((f"bare_batch_{b}" for b in BATCHES), key=lambda n: figures[n]["median"])
    return {
        "threads": threads,
        "agent_batch": agent_batch,
        "figures": figures,
        "anchor": best,
        "agent_vs_best_bare": ratio(figures["agent"]["median"], figures[best]["median"]),
    }


def levers(model, inputs: np.ndarray, threads: int, batch: int, repeats: int) -> dict:
    """One option changed at a time against onnxruntime's defaults, same threads and batch."""
    images = _work(inputs)
    path = model.backbone_path
    level = ort.GraphOptimizationLevel
    sessions = {
        "defaults (spinning on, ORT_ENABLE_ALL, arena on)": bare_session(path, threads),
        "spinning off (the agent)": bare_session(path, threads, spinning="0"),
        "graph optimisation basic": bare_session(path, threads, level=level.ORT_ENABLE_BASIC),
        "graph optimisation extended": bare_session(path, threads, level=level.ORT_ENABLE_EXTENDED),
        "memory arena off": bare_session(path, threads, arena=False),
        "memory pattern off (the agent)": bare_session(path, threads, pattern=False),
    }
    alternatives = {name: _runner(s, images, batch) for name, s in sessions.items()}
    strided = np.ascontiguousarray(np.concatenate([images, images], axis=1))[:, ::2]
    default = sessions["defaults (spinning on, ORT_ENABLE_ALL, arena on)"]
    alternatives["non-contiguous input (onnxruntime copies it)"] = _runner(default, strided, batch)
    samples = interleaved(alternatives, repeats)
    return {
        "threads": threads,
        "batch": batch,
        "figures": {name: rate(s, WORK, "images/s") for name, s in samples.items()},
    }


def pipeline(model, files: list[Path], settings, repeats: int) -> dict:
    """``SliceEmbedder`` over stored instances vs its parts: decode alone, onnxruntime alone."""
    from ftlct.agent.inference.embedder import SliceEmbedder
    from ftlct.agent.inference.embeddings import EmbeddingStore
    from ftlct.agent.inference.engine import load_snapshot
    from ftlct.agent.metrics import AgentMetrics
    from ftlct.agent.series.series_index import SeriesIndex
    from ftlct.agent.store.database import Database
    from ftlct.agent.store.disk import DiskGuard
    from ftlct.agent.store.instance_store import InstanceStore
    from ftlct.agent.store.layout import DataDir
    from ftlct.export.preprocessing import read_slices_from_bytes, to_model_input

    inference = settings.inference
    with tempfile.TemporaryDirectory(prefix="ftlct-perf-") as tmp:
        layout = DataDir(Path(tmp)).create()
        db = Database(layout.index)
        store = InstanceStore(layout, db, DiskGuard(lambda: 2**62, 0), series=SeriesIndex(db))
        for file in files:
            store.put(file.read_bytes())
        instances = [store.instance(uid) for uid in (r["sop_instance_uid"] for r in _all_rows(db))]
        embeddings = EmbeddingStore(layout)
        snapshot = load_snapshot(model.path, inference.threads)
        embedder = SliceEmbedder(
            store,
            embeddings,
            inference.batch_size,
            inference.decode_threads,
            AgentMetrics(),
        )
        prepared = to_model_input(
            [s for i in instances for s in read_slices_from_bytes(store.path_of(i).read_bytes())],
            snapshot.spec,
        )
        batch = inference.batch_size

        def decode_only():
            for instance in instances:
                to_model_input(
                    read_slices_from_bytes(store.path_of(instance).read_bytes()), snapshot.spec
                )

        cores: dict[str, float] = {}
        try:
            samples = interleaved(
                {
                    "agent pipeline (SliceEmbedder)": lambda: embedder.embed(snapshot, instances),
                    "decode + preprocess alone (1 thread)": decode_only,
                    "onnxruntime alone (agent session)": lambda: [
                        snapshot.embed(prepared[i : i + batch])
                        for i in range(0, len(prepared), batch)
                    ],
                },
                repeats,
                cores_used=cores,
            )
        finally:
            embedder.close()
            embeddings.close()
            db.close()
    n = len(prepared)
    figures = {name: rate(s, n, "slices/s") for name, s in samples.items()}
    decode_s = n / figures["decode + preprocess alone (1 thread)"]["median"]
    ort_s = n / figures["onnxruntime alone (agent session)"]["median"]
    pipe_s = n / figures["agent pipeline (SliceEmbedder)"]["median"]
    return {
        "slices": n,
        "threads": inference.threads,
        "decode_threads": inference.decode_threads,
        "batch": batch,
        "figures": figures,
        "cores_used": cores,
        "sequential_sum_s": round(decode_s + ort_s, 3),
        "pipeline_s": round(pipe_s, 3),
        "overlap_hides": round((decode_s + ort_s - pipe_s) / min(decode_s, ort_s), 3),
    }


def _all_rows(db) -> list:
    return db.query("SELECT sop_instance_uid FROM instances ORDER BY instance_number")


def backbone_section(
    model, inputs: np.ndarray, files: list[Path], settings, repeats: int, thread_counts
) -> dict:
    """Every backbone figure and the goal: the agent's path >= 0.9x the best bare session."""
    agent_threads = settings.inference.threads
    sessions = [
        session_comparison(model, inputs, t, settings.inference.batch_size, repeats)
        for t in sorted(set(thread_counts) | {agent_threads})
    ]
    at_agent = next(s for s in sessions if s["threads"] == agent_threads)
    section = {
        "sessions": sessions,
        "levers": levers(model, inputs, max(thread_counts), 16, repeats),
        "goal": goal(
            "backbone",
            at_agent["agent_vs_best_bare"],
            0.9,
            at_least=True,
            what=f"agent's ModelSnapshot.embed ({agent_threads} thread(s), batch "
            f"{settings.inference.batch_size}) / best bare onnxruntime session, same threads",
        ),
    }
    if files:
        section["pipeline"] = pipeline(model, files, settings, max(2, repeats // 2))
    return section
