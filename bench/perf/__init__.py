"""``ftl-bench perf``: every figure of issue 13 beside its anchor, measured in one run.

Sections (``--only`` picks some): ``backbone`` (the agent's embedding path vs a
bare onnxruntime session), ``int8`` (static QDQ vs fp32: speed, per-op profile,
macro-F1 on the covid-ct test split), ``bytes`` (sealed update envelopes, FTL vs
FedAvg), ``ingest`` (storescp vs Orthanc vs the agent, 1 and 4 associations, and
the agent's peak RSS), ``latency`` (CQ500 last slice to result while another
association streams), ``model`` (preprocessing, head swap, torch vs
onnxruntime) and ``cloud`` (the cloud-scale benchmark's figures, see
``cloud.py``). Every figure is a median of n with its min and max; each section
records the machine's load while it ran (``measure.machine_load``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ftlct.bench.perf.measure import machine, machine_load
from ftlct.bench.perf.report import perf_markdown

SECTIONS = ("backbone", "int8", "bytes", "ingest", "latency", "model", "cloud")

__all__ = ["SECTIONS", "failed_sections", "perf_markdown", "run_perf"]

log = logging.getLogger(__name__)


def failed_sections(document: dict) -> list[str]:
    """Names of the sections that raised instead of measuring (their ``error``)."""
    return [n for n in SECTIONS if isinstance(document.get(n), dict) and "error" in document[n]]


def run_perf(
    out: Path,
    quick: bool = False,
    thread_counts: list[int] | None = None,
    model_dir: Path | None = None,
    only: tuple[str, ...] = SECTIONS,
) -> dict:
    """Run the chosen sections; the ``perf.json`` document."""
    from ftlct.agent.settings import AgentSettings
    from ftlct.bench.perf import model_figures as mf

    out = Path(out).resolve()  # the receivers run in their own working directories
    work = out / "perf-work"
    work.mkdir(parents=True, exist_ok=True)
    thread_counts = thread_counts or [1, 2]
    repeats = 3 if quick else 9
    settings = AgentSettings()  # the agent's defaults are what is measured
    model = mf.load_model(work, model_dir)
    inputs, source = mf.real_inputs(model, 32)
    cq500 = sorted(mf.CQ500.glob("*.dcm")) if mf.CQ500.is_dir() else []
    started = time.perf_counter()
    document: dict = {
        "machine": machine(),
        "quick": quick,
        "model_under_test": {
            "path": str(model.path),
            "version": model.version,
            "backbone_sha256": model.backbone_sha256,
            "embedding_dim": model.embedding_dim,
        },
        "agent_settings": {
            "inference.threads": settings.inference.threads,
            "inference.batch_size": settings.inference.batch_size,
            "inference.decode_threads": settings.inference.decode_threads,
        },
        "input": f"{model.preprocessing.input_size} px, {source}",
    }

    def section(name: str, run) -> None:
        if name not in only:
            return
        record: dict = {}
        try:
            with machine_load(record):
                result = run()
        except Exception as exc:  # the other sections still run; the CLI then fails
            log.exception("perf section %s failed", name)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        document[name] = result
        result.setdefault("load", record.get("load"))

    from ftlct.bench.perf.backbone import backbone_section
    from ftlct.bench.perf.cloud import cloud_section
    from ftlct.bench.perf.ingest import ingest_section, series_latency_section
    from ftlct.bench.perf.int8 import calibration_inputs, int8_section
    from ftlct.bench.perf.peers import missing_programs
    from ftlct.bench.perf.upload_bytes import upload_bytes_section

    section(
        "backbone",
        lambda: backbone_section(
            model, inputs, cq500[: 24 if quick else 96], settings, repeats, thread_counts
        ),
    )
    section(
        "int8",
        lambda: int8_section(
            model,
            work,
            inputs,
            calibration_inputs(model, cq500),
            settings.inference.threads,
            repeats,
            quick,
        ),
    )
    section("bytes", lambda: upload_bytes_section(model))
    missing = missing_programs()
    if missing:
        for name in ("ingest", "latency"):
            if name in only:
                document[name] = {"skipped": f"not installed: {', '.join(missing)}"}
    else:
        section(
            "ingest",
            lambda: ingest_section(
                model.path, work / "ingest", 1 if quick else 3, 60 if quick else 300
            ),
        )
        if cq500:
            section(
                "latency",
                lambda: series_latency_section(
                    model.path, work / "latency", mf.CQ500, 1 if quick else 3
                ),
            )
        elif "latency" in only:
            document["latency"] = {"skipped": f"{mf.CQ500} absent"}
    section(
        "model",
        lambda: {
            "preprocessing": mf.preprocessing_rate(model, 40 if quick else 239),
            "head_swap": mf.head_swap(model, work, repeats),
            "torch_vs_ort": mf.torch_vs_ort(model, inputs, max(thread_counts), repeats),
        },
    )
    section("cloud", lambda: cloud_section(out, quick))
    document["wall_s"] = round(time.perf_counter() - started, 1)
    return document
