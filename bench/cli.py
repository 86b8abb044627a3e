"""``ftl-bench``: the federation experiment (FTL vs FedAvg vs CFL) and model-level benchmarks."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from ftlct.protocol.cli import CliError, echo_json, main_for, new_app

# The sections of `ftl-bench perf` (ftlct.bench.perf.SECTIONS, repeated here so --help
# needs no import of the benchmark's dependencies).
PERF_SECTIONS = ("backbone", "int8", "bytes", "ingest", "latency", "model", "cloud")

app = new_app("Experiments and benchmarks: FTL vs FedAvg vs CFL on CT data, model performance.")


def _command_line() -> str:
    return "ftl-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _write_json(path: Path, data: dict) -> None:
    from ftlct.export.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@app.command()
def federation(
    data: Path = typer.Option(
        ..., "--data", help="Folder: one sub-folder per class, optional manifest.csv."
    ),
    sites: int = typer.Option(None, "--sites", help="Number of simulated sites (default 6)."),
    rounds: int = typer.Option(None, "--rounds", help="Federated rounds (default 20)."),
    methods: str = typer.Option(
        None,
        "--methods",
        help="Comma-separated: ftl,fedavg,cfl,central,local (central always runs).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: results.json, report.md, *.png."),
    seed: int = typer.Option(
        None, "--seed", help="Seed of split, partition and training (default 0)."
    ),
    splits: int = typer.Option(
        None,
        "--splits",
        help="Run N splits (seeds SEED..SEED+N-1) and report mean, SE, 95% intervals (default 1).",
    ),
    alpha: float = typer.Option(
        None, "--alpha", help="Dirichlet label-skew concentration (default 0.5)."
    ),
    test_fraction: float = typer.Option(None, "--test-fraction", help="Test split (default 0.2)."),
    input_size: int = typer.Option(
        None, "--input-size", help="Input size for every method (default 224)."
    ),
    scanners: str = typer.Option(
        None, "--scanners", help="Scanner profiles: realistic, harsh or none."
    ),
    transport: str = typer.Option(
        None, "--transport", help="inproc, or mqtt (real mosquitto + ftl-cloud serve)."
    ),
    broker: str = typer.Option(
        None,
        "--broker",
        help="mqtt transport: mqtt://HOST:PORT of a running broker (default: start one).",
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Cache for views and models (default OUT/cache)."
    ),
    threads: int = typer.Option(
        None, "--threads", help="torch/onnxruntime threads (default: library's)."
    ),
    config: Path = typer.Option(
        None, "--config", help="TOML settings ([ftl], [network], [cfl] tables)."
    ),
    levers: Path = typer.Option(
        None,
        "--levers",
        help="levers.json to include in report.md (default OUT/levers.json if present).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
) -> None:
    """Run FTL, FedAvg and CFL (plus central and local references) on one or more non-IID splits."""
    from ftlct.bench.dataset import DatasetError
    from ftlct.bench.experiment import LeakError, run_experiment
    from ftlct.bench.mqtt_transport import TransportError
    from ftlct.bench.progress import RichReporter
    from ftlct.bench.report import write_report
    from ftlct.bench.settings import load_bench_settings
    from ftlct.bench.splits import SplitError
    from ftlct.export.mobilenet_v2 import WeightsError
    from ftlct.export.preprocessing import PreprocessingError
    from ftlct.protocol.settings import SettingsError

    try:
        settings = load_bench_settings(
            config,
            data=str(data),
            out=str(out),
            sites=sites,
            rounds=rounds,
            methods=methods,
            seed=seed,
            splits=splits,
            alpha=alpha,
            test_fraction=test_fraction,
            input_size=input_size,
            scanners=scanners,
            transport=transport,
            broker=broker,
            cache_dir=str(cache_dir) if cache_dir else None,
            threads=threads,
        )
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    reporter = RichReporter(quiet=json_out)
    try:
        with reporter:
            if settings.splits > 1:
                from ftlct.bench.multi_split import run_splits

                results, split = run_splits(settings, reporter, out, _write_json), None
            else:
                experiment = run_experiment(settings, reporter)
                results, split = experiment.results, experiment.split
    except (DatasetError, SplitError, WeightsError, PreprocessingError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    except LeakError as exc:
        raise CliError(f"test split leaked into training: {exc}") from exc
    except TransportError as exc:
        raise CliError(f"mqtt transport: {exc}") from exc
    results["command"] = _command_line()
    _write_json(out / "results.json", results)
    if split is not None:
        _write_json(out / "split.json", split)
    report = write_report(results, out, results["command"], _lever_table(out, levers))
    if json_out:
        echo_json(results)
        return
    summary = results.get("multi_split", {}).get("summary", {})
    for name, m in results["methods"].items():
        f1 = summary.get(name, {}).get("f1")
        spread = f" ± {f1['se']:.3f} (SE, {f1['n']} splits)" if f1 and f1["se"] else ""
        print(
            f"{name:8s} acc {m['accuracy']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}{spread}  converged {m['convergence_time_s'] or 0:.1f} s"
        )
    print(f"wrote {out / 'results.json'} and {report}")


def _lever_table(out: Path, levers: Path | None) -> dict | None:
    """``--levers``, else OUT/levers.json, for the report; None if there is none."""
    path = levers or (out / "levers.json")
    return json.loads(path.read_text()) if path.is_file() else None


@app.command()
def report(
    out: Path = typer.Option(..., "--out", help="A federation output folder (has results.json)."),
    levers: Path = typer.Option(
        None, "--levers", help="levers.json (default OUT/levers.json if present)."
    ),
) -> None:
    """Redraw report.md and the plots from OUT/results.json (and the levers table)."""
    from ftlct.bench.report import write_report

    results_path = out / "results.json"
    if not results_path.is_file():
        raise CliError(f"{results_path}: no such file (run ftl-bench federation --out {out} first)")
    try:
        results = json.loads(results_path.read_text())
        lever_data = _lever_table(out, levers)
    except json.JSONDecodeError as exc:
        raise CliError(f"unreadable JSON: {exc}") from exc
    command = results.get("command", "ftl-bench federation (command not recorded)")
    print(f"wrote {write_report(results, out, command, lever_data)}")


@app.command()
def levers(
    data: Path = typer.Option(
        ..., "--data", help="Folder: one sub-folder per class, optional manifest.csv."
    ),
    out: Path = typer.Option(..., "--out", help="Writes levers.json and levers.md here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split the levers are scored on."),
    rounds: int = typer.Option(20, "--rounds", help="Federated rounds per lever."),
    only: str = typer.Option(None, "--only", help="Comma-separated lever names (default: all)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache (default OUT/cache)."),
    threads: int = typer.Option(0, "--threads", help="torch/onnxruntime threads."),
) -> None:
    """Score each FTL lever (central and federated F1) against the default configuration."""
    from ftlct.bench.levers import LEVERS, levers_markdown, merge_levers, run_levers
    from ftlct.bench.progress import RichReporter

    names = [n.strip() for n in only.split(",")] if only else None
    unknown = sorted(set(names or []) - {lever.name for lever in LEVERS})
    if unknown:
        raise CliError(
            f"unknown levers {unknown}; known: {', '.join(lever.name for lever in LEVERS)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    with RichReporter() as reporter:
        document = run_levers(
            data, out, seed, rounds, names, cache_dir, threads, reporter, _command_line()
        )
    if names and (out / "levers.json").is_file():  # --only refreshes some rows of the table
        document = merge_levers(json.loads((out / "levers.json").read_text()), document)
    _write_json(out / "levers.json", document)
    (out / "levers.md").write_text(levers_markdown(document) + "\n")
    print(levers_markdown(document))


@app.command()
def perf(
    out: Path = typer.Option(..., "--out", help="Writes perf.json and perf.md here."),
    quick: bool = typer.Option(False, "--quick", help="Fewer repetitions (a smoke run)."),
    threads: str = typer.Option("1,2", "--threads", help="Thread counts to measure."),
    model: Path = typer.Option(
        None, "--model", help="Model directory to measure (default: one built under OUT)."
    ),
    only: str = typer.Option(
        None, "--only", help="Comma-separated sections (default all): " + ", ".join(PERF_SECTIONS)
    ),
    json_out: bool = typer.Option(False, "--json", help="Print perf.json to stdout."),
) -> None:
    """Issue 13's figures beside their anchors: backbone, int8, bytes, ingest, latency, memory."""
    from ftlct.bench.perf import failed_sections, perf_markdown, run_perf
    from ftlct.export.model_dir import ModelDirError

    try:
        thread_counts = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError as exc:
        raise CliError(f"--threads takes comma-separated integers, got {threads!r}") from exc
    if not thread_counts or min(thread_counts) < 1:
        raise CliError("--threads needs positive integers")
    sections = tuple(s.strip() for s in only.split(",") if s.strip()) if only else PERF_SECTIONS
    unknown = sorted(set(sections) - set(PERF_SECTIONS))
    if unknown or not sections:
        raise CliError(f"--only: unknown sections {unknown}; known: {', '.join(PERF_SECTIONS)}")
    if model is not None and not (model / "manifest.json").is_file():
        raise CliError(f"--model {model}: no manifest.json (not a model directory)")
    out.mkdir(parents=True, exist_ok=True)
    try:
        document = run_perf(out, quick, thread_counts, model, sections)
    except ModelDirError as exc:
        raise CliError(f"--model: {exc}") from exc
    _write_json(out / "perf.json", document)
    (out / "perf.md").write_text(perf_markdown(document) + "\n")
    if json_out:
        echo_json(document)
    else:
        print(perf_markdown(document))
    failed = failed_sections(document)
    if failed:
        reasons = [f"{name} ({document[name]['error']})" for name in failed]
        raise CliError(f"sections failed (see perf.md): {'; '.join(reasons)}")


def main() -> None:
    main_for(app, "ftl-bench")
