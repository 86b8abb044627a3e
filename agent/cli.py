"""``ftl-agent``: the edge agent beside a CT scanner (serve, status, results, infer, label,
train, identity, doctor)."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlct.protocol.cli import CliError, echo_json, main_for, new_app

app = new_app("ftl-ct edge agent: DICOM node, ONNX inference, results back to the PACS.")

CONFIG_HELP = "TOML settings file (flags override it, FTLCT_AGENT_* variables sit in between)."
DATA_DIR_HELP = (
    "Agent data directory (default: $XDG_DATA_HOME/ftl-agent or ~/.local/share/ftl-agent)."
)


def _settings(config: Path | None, overrides: dict):
    from ftlct.agent.settings import SettingsError, load_settings

    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc


def _private_files() -> None:
    """Whatever this process creates in the data dir (sqlite's files too) is 0600/0700."""
    import os

    from ftlct.agent.store.layout import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)


def _read_index(config: Path | None, data_dir: Path | None, reader):
    """``reader(db)`` on the data dir's index (read-only use; fine beside a running serve)."""
    from ftlct.agent.store.database import Database
    from ftlct.agent.store.layout import DataDir

    settings = _settings(config, {"storage.data_dir": data_dir})
    layout = DataDir(settings.storage.data_dir)
    if not layout.index.is_file():
        raise CliError(f"no agent data in {layout.root} (run `ftl-agent serve` there first)")
    db = Database(layout.index, create=False)
    try:
        return reader(db)
    finally:
        db.close()


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    ae_title: str = typer.Option(None, "--ae-title", help="Our AE title (default FTLCT)."),
    host: str = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="DICOM port (default 11112)."),
    allow_ae: list[str] = typer.Option(
        None, "--allow-ae", help="Accept associations only from this calling AE (repeatable)."
    ),
    model: Path = typer.Option(None, "--model", help="Model directory (default models/default)."),
    broker: str = typer.Option(None, "--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    site: str = typer.Option(None, "--site", help="This site's id in the federation."),
    federation: str = typer.Option(None, "--federation", help="Federation name."),
    cloud_key: str = typer.Option(
        None, "--cloud-key", help="The cloud's public key that global models must be signed with."
    ),
    result_destination: str = typer.Option(
        None, "--result-destination", help="AE@HOST:PORT to C-STORE the SR results to."
    ),
) -> None:
    """Receive studies over DICOM, classify each series, send results back; until SIGTERM."""
    from ftlct.agent.components import optional_components
    from ftlct.agent.inference.engine import ModelError
    from ftlct.agent.logs import configure_logging
    from ftlct.agent.memory import limit_malloc_arenas
    from ftlct.agent.service import AgentService

    limit_malloc_arenas()  # before any of the service's threads exist
    settings = _settings(
        config,
        {
            "storage.data_dir": data_dir,
            "dicom.ae_title": ae_title,
            "dicom.host": host,
            "dicom.port": port,
            "dicom.allow_ae": allow_ae or None,
            "inference.model_dir": model,
            "federation.broker": broker,
            "federation.site": site,
            "federation.name": federation,
            "federation.cloud_key": cloud_key,
            "results.destination": result_destination,
        },
    )
    configure_logging(settings.logging)
    _private_files()
    try:
        service = AgentService(settings)
    except ModelError as exc:
        raise CliError(f"model: {exc} (build one with `make model` or pass --model)") from exc
    except OSError as exc:
        raise CliError(f"data dir {settings.storage.data_dir}: {exc.strerror or exc}") from exc
    for component in optional_components(settings, service):
        service.add_component(component)
    try:
        service.run_until_signal()
    except OSError as exc:  # a port in use, a certificate file that will not load...
        raise CliError(f"cannot serve: {exc.strerror or exc}") from exc


@app.command()
def status(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Counts, model version, queue depths."""
    from ftlct.agent.status import collect_status

    report = _read_index(config, data_dir, collect_status)
    if json_out:
        echo_json(report)
        return
    for key in (
        "instances_stored",
        "series_complete",
        "series_inferred",
        "quarantined",
        "labels",
        "model_version",
        "outbox",
    ):
        print(f"{key:<18} {report[key]}")
    print("series             " + _pairs(report["series"]))
    print("queues             " + _pairs(report["queues"]))
    print("deliveries         " + _pairs(report["deliveries"]))
    fed = report["federation"]
    if fed["site"]:
        print(
            f"federation         site={fed['site']} federation={fed['federation']} "
            f"connected={fed['connected']} round={fed['last_round']} ({fed['round_status']})"
        )
        print(
            f"updates            made={fed['updates_made']} acknowledged={fed['updates_acknowledged']}"
            f" pending={fed['updates_pending']} rejected={fed['updates_receipted']['rejected']}"
            f" unreceipted={fed['updates_receipted']['unreceipted']}"
            f" gate_refusals={fed['gate_refusals']} models_refused={fed['models_refused']}"
        )
        if fed["training_waiting_for"]:
            print(f"training           {fed['training_waiting_for']}")
        privacy = fed["privacy"]
        if privacy["enabled"]:
            print(
                f"privacy            epsilon={privacy['epsilon_spent']:.3f} of "
                f"{privacy['epsilon_limit']:g} (delta={privacy['delta']:g}, {privacy['rounds']} rounds)"
            )


def _pairs(values: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


@app.command()
def results(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One row per series: UIDs, instances, label, probabilities, model version, latency."""
    from ftlct.agent.status import list_results

    rows = _read_index(config, data_dir, list_results)
    if json_out:
        echo_json(rows)
        return
    table = [("SERIES", "N", "LABEL", "P", "MODEL", "LATENCY_S")]
    for row in rows:
        table.append(
            (
                _short_uid(row["series_uid"]),
                str(row["n_instances"]),
                row["label"],
                f"{row['probabilities'][row['label']]:.3f}",
                row["model_version"],
                f"{row['latency_s']:.1f}",
            )
        )
    _print_table(table)


def _short_uid(uid: str, width: int = 28) -> str:
    return uid if len(uid) <= width else "…" + uid[-(width - 1) :]


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


label_app = new_app("Confirmed labels for local training (keyed by Study/Series/SOP Instance UID).")
app.add_typer(label_app, name="label")
PENDING_HELP = "Keep labels for UIDs not received yet; they count once their images arrive."


def _label_rows(config, data_dir, rows, where, source, allow_pending) -> None:
    import json

    from ftlct.agent.labels.label_store import LabelError, LabelStore
    from ftlct.export.model_dir import ModelDir, ModelDirError

    settings = _settings(config, {"storage.data_dir": data_dir})

    def store(db):
        known = db.get_meta("model_labels")
        if known:
            allowed = json.loads(known)
        else:  # an index from before labels existed: the configured model says
            try:
                allowed = ModelDir.load(settings.inference.model_dir).labels
            except ModelDirError as exc:
                raise CliError(f"cannot tell the model's labels: {exc}") from exc
        try:
            return LabelStore(db).set_many(rows, allowed, source, allow_pending, where)
        except LabelError as exc:
            raise CliError(str(exc)) from exc

    summary = _read_index(config, data_dir, store)
    pending = f"; {summary.pending} pending until their images arrive" if summary.pending else ""
    print(f"labels: {summary.text()}{pending}")


@label_app.command("import")
def label_import(
    csv_file: Path = typer.Argument(..., help="CSV with the header 'uid,label'."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    allow_pending: bool = typer.Option(False, "--allow-pending", help=PENDING_HELP),
) -> None:
    """Import labels from a CSV (all rows or none); importing the same file again changes nothing."""
    from ftlct.agent.labels.label_csv import read_label_csv
    from ftlct.agent.labels.label_store import LabelError

    try:
        rows, where = read_label_csv(csv_file)
    except LabelError as exc:
        raise CliError(str(exc)) from exc
    _label_rows(config, data_dir, rows, where, csv_file.name, allow_pending)


@label_app.command("set")
def label_set(
    uid: str = typer.Argument(..., help="A StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID."),
    label: str = typer.Argument(..., help="One of the model's labels."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    allow_pending: bool = typer.Option(False, "--allow-pending", help=PENDING_HELP),
) -> None:
    """Set (or correct) the label of one study, series or instance."""
    _label_rows(
        config, data_dir, [(uid.strip(), label.strip())], ["argument"], "set", allow_pending
    )


@app.command()
def train(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    site: str = typer.Option(
        None, "--site", help="This site's id (default: as serve recorded it)."
    ),
    federation: str = typer.Option(
        None, "--federation", help="Federation name (default: recorded)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One local round now, from the last round announcement received; the delta goes to the
    outbox (serve publishes it when connected)."""
    from ftlct.agent.sync.local_rounds import run_local_round

    settings = _settings(
        config,
        {"storage.data_dir": data_dir, "federation.site": site, "federation.name": federation},
    )
    _private_files()
    outcome = run_local_round(settings, settings.storage.data_dir)
    if json_out:
        echo_json(outcome.to_json())
    if not outcome.trained:
        raise CliError(f"training {outcome.outcome}: {outcome.reason}")
    if not json_out:
        metrics = outcome.metrics
        scores = " ".join(
            f"{key}={metrics[key]:.3f}"
            for key in ("train_loss", "val_f1", "global_val_f1")
            if key in metrics
        )
        print(
            f"round {outcome.round}: update {outcome.update_id} in the outbox "
            f"(n_samples={outcome.n_samples} {scores})".rstrip()
        )


@app.command()
def identity(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    site: str = typer.Option(None, "--site", help="This site's id in the federation."),
) -> None:
    """Create the site's Ed25519 key pair if absent; print "SITE PUBLIC_KEY" (for ftl-cloud enroll)."""
    from ftlct.agent.sync.site_identity import site_identity
    from ftlct.protocol.identity import IdentityError

    settings = _settings(config, {"storage.data_dir": data_dir, "federation.site": site})
    name = settings.federation.site
    if not name:
        raise CliError("no site id: pass --site or set [federation] site")
    try:
        key = site_identity(settings.storage.data_dir, name)
    except (IdentityError, OSError) as exc:
        raise CliError(f"site key: {exc}") from exc
    print(f"{name} {key.public_b64}")


@app.command()
def doctor(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    data_dir: Path = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    model: Path = typer.Option(None, "--model", help="Model directory (default models/default)."),
    host: str = typer.Option(None, "--host", help="Address serve listens on."),
    port: int = typer.Option(None, "--port", help="DICOM port serve listens on."),
    broker: str = typer.Option(None, "--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    site: str = typer.Option(None, "--site", help="This site's id in the federation."),
    federation: str = typer.Option(None, "--federation", help="Federation name."),
    cloud_key: str = typer.Option(None, "--cloud-key", help="The cloud's public key."),
    result_destination: str = typer.Option(
        None, "--result-destination", help="AE@HOST:PORT the SR results go to."
    ),
    timeout: float = typer.Option(5.0, "--timeout", min=0.5, help="Seconds per network check."),
    json_out: bool = typer.Option(False, "--json", help="Print every check as JSON."),
) -> None:
    """Check settings, ports, disk, model, keys, broker, AE and clock; say what fixes each
    problem; exit 1 on any error. Changes nothing."""
    from ftlct.agent.doctor import diagnose

    report = diagnose(
        config,
        {
            "storage.data_dir": data_dir,
            "inference.model_dir": model,
            "dicom.host": host,
            "dicom.port": port,
            "federation.broker": broker,
            "federation.site": site,
            "federation.name": federation,
            "federation.cloud_key": cloud_key,
            "results.destination": result_destination,
        },
        timeout,
    )
    if json_out:
        echo_json(report.to_json())
    else:
        print(report.render())
    if report.failed:
        raise typer.Exit(1)


@app.command()
def infer(
    paths: list[Path] = typer.Argument(..., help="DICOM files, pictures (PNG, JPG) or folders."),
    model: Path = typer.Option(None, "--model", help="Model directory (default models/default)."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classify files offline: DICOM grouped by series, each picture on its own."""
    from ftlct.agent.inference.engine import ModelError, load_snapshot
    from ftlct.agent.inference.offline import infer_paths

    settings = _settings(config, {"inference.model_dir": model})
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    try:
        snapshot = load_snapshot(settings.inference.model_dir, settings.inference.threads)
    except ModelError as exc:
        raise CliError(f"model: {exc}") from exc
    rows = infer_paths(list(paths), snapshot, settings.inference)
    if json_out:
        echo_json(rows)
    else:
        table = [("INPUT", "KIND", "FILES", "SLICES", "LABEL", "P")]
        for row in rows:
            label = row.get("label")
            p = f"{row['probabilities'][label]:.3f}" if label else row.get("error", "")
            table.append(
                (
                    row["input"],
                    row.get("kind", "-"),
                    str(row.get("n_files", 0)),
                    str(row.get("n_slices", 0)),
                    label or "-",
                    p,
                )
            )
        _print_table(table)
    if not any(row.get("label") for row in rows):
        raise CliError("no input could be classified")


def main() -> None:
    main_for(app, "ftl-agent")
