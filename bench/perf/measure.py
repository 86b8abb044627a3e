"""How ``ftl-bench perf`` measures: medians of n with their spread, alternatives interleaved.

The machine is shared, so a figure alone says little: every figure is taken
beside its alternative (its anchor) in the same run, and the two are timed in
turns (A B A B ...), so a burst of someone else's load lands on both. Each
section records the machine's load while it ran.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def summary(samples: list[float], unit: str, digits: int = 3) -> dict:
    """``{"median", "n", "min", "max", "unit"}`` of repeated measurements."""
    if not samples:
        raise ValueError("no samples")
    return {
        "median": round(statistics.median(samples), digits),
        "n": len(samples),
        "min": round(min(samples), digits),
        "max": round(max(samples), digits),
        "unit": unit,
    }


def rate(samples_s: list[float], items: int, unit: str) -> dict:
    """Items per second from the seconds each repetition took."""
    return summary([items / s for s in samples_s], unit, 2)


def interleaved(
    alternatives: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    cores_used: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each alternative over ``repeats`` rounds, run in turns after ``warmup`` rounds.

    ``cores_used``, if given, gets each alternative's CPU seconds (this process, all
    threads) per wall second: on a shared machine, how much of it the work really had.
    """
    for _ in range(warmup):
        for fn in alternatives.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in alternatives}
    cpu: dict[str, float] = dict.fromkeys(alternatives, 0.0)
    for _ in range(repeats):
        for name, fn in alternatives.items():
            cpu_started = time.process_time()
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
            cpu[name] += time.process_time() - cpu_started
    if cores_used is not None:
        for name, seconds in samples.items():
            cores_used[name] = round(cpu[name] / sum(seconds), 2)
    return samples


def ratio(value: float, anchor: float) -> float:
    return round(value / anchor, 3) if anchor else float("nan")


def goal(name: str, value: float, target: float, *, at_least: bool, what: str) -> dict:
    """A goal of issue 13: the measured ratio (or figure) against its target."""
    met = value >= target if at_least else value <= target
    return {
        "goal": name,
        "value": value,
        "target": f"{'>=' if at_least else '<='} {target}",
        "met": bool(met),
        "what": what,
    }


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat; (0, 0) elsewhere."""
    try:
        with open("/proc/stat") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


@contextmanager
def machine_load(record: dict) -> Iterator[None]:
    """Fill ``record["load"]`` with the load average before/after and the CPU busy share."""
    before = os.getloadavg()
    busy0, total0 = _cpu_busy()
    started = time.perf_counter()
    try:
        yield
    finally:
        busy1, total1 = _cpu_busy()
        record["load"] = {
            "loadavg_1min_before": round(before[0], 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2),
            "cpu_busy_share": round((busy1 - busy0) / (total1 - total0), 3)
            if total1 > total0
            else None,
            "seconds": round(time.perf_counter() - started, 1),
        }


def machine() -> dict:
    import platform

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = _cpu_flags()
    return {
        "python": platform.python_version(),
        "cpus": cpus,
        "processor": _cpu_model() or platform.machine(),
        "int8_instructions": sorted(
            f for f in flags if f in {"avx512_vnni", "avx_vnni", "amx_int8"}
        ),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_info_line(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_model() -> str:
    return _cpu_info_line("model name")


def _cpu_flags() -> set[str]:
    return set(_cpu_info_line("flags").split())
