"""``ftl-cloud``: serve rounds, show the fleet, manage identities and enrolment, write broker configs."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlct.protocol.cli import CliError, echo_json, main_for, new_app

app = new_app("The ftl-ct cloud aggregator: federated rounds over MQTT, enrolment, fleet status.")

CONFIG_HELP = "TOML settings file (see README: Cloud and protocol). Env: FTLCT_CLOUD_*."
STATE_HELP = (
    "State directory (SQLite state and the cloud's keys). "
    "Default: $XDG_DATA_HOME/ftl-cloud or ~/.local/share/ftl-cloud."
)


def _settings(config: Path | None, **flags):
    from ftlct.cloud.settings import load_cloud_settings
    from ftlct.protocol.settings import SettingsError

    if config is not None and not config.is_file():
        raise CliError(f"--config {config}: no such file")
    try:
        return load_cloud_settings(config, **flags)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    broker: str = typer.Option(None, "--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    federation: str = typer.Option(None, "--federation", help="Federation name (topic prefix)."),
    strategy: str = typer.Option(
        None, "--strategy", help="ftl, fedavg, cfl, median, trimmed_mean, norm_clipping."
    ),
    min_sites: int = typer.Option(
        None, "--min-sites", min=1, help="Updates needed to close a round."
    ),
    round_timeout: float = typer.Option(
        None, "--round-timeout", min=0.1, help="Seconds a round stays open."
    ),
    rounds: int = typer.Option(
        None, "--rounds", min=0, help="Stop after this many rounds (0: never)."
    ),
    model: Path = typer.Option(
        None, "--model", help="Model directory whose head is the first global model."
    ),
    initial_weights: Path = typer.Option(
        None,
        "--initial-weights",
        help="Instead of --model: a safetensors file of a whole network (metadata 'labels': "
        "a JSON list) to federate from; not with --strategy ftl.",
    ),
    state_dir: Path = typer.Option(None, "--state-dir", help=STATE_HELP),
    dev_trust_on_first_use: bool = typer.Option(
        None,
        "--dev-trust-on-first-use",
        help="DEVELOPMENT ONLY: enrol unknown sites from their first signed update.",
    ),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
    http: str = typer.Option(
        None,
        "--http",
        help="Serve the read-only dashboard on HOST:PORT (a bare PORT binds 127.0.0.1); "
        "its token is in STATE_DIR/dashboard.token.",
    ),
) -> None:
    """Run federated rounds: publish global models, collect and validate updates, aggregate."""
    import logging

    from ftlct.cloud.initial_model import InitialModelError
    from ftlct.cloud.round_coordinator import CloudStateError
    from ftlct.cloud.server import serve as run_server
    from ftlct.cloud.strategies import make_strategy
    from ftlct.export.model_dir import ModelDirError
    from ftlct.protocol.identity import IdentityError
    from ftlct.protocol.mqtt_connection import parse_broker_url
    from ftlct.protocol.topics import check_name

    settings = _settings(
        config,
        broker=broker,
        federation=federation,
        strategy=strategy,
        min_sites=min_sites,
        round_timeout=round_timeout,
        rounds=rounds,
        model=str(model) if model else None,
        initial_weights=str(initial_weights) if initial_weights else None,
        state_dir=str(state_dir) if state_dir else None,
        dev_trust_on_first_use=dev_trust_on_first_use,
        http=http,
    )
    if model is not None and initial_weights is not None:
        raise CliError(
            "give --model (a head over a backbone) or --initial-weights (a whole network), not both"
        )
    if settings.initial_weights and settings.strategy == "ftl":
        raise CliError(
            "--initial-weights starts a whole-network federation; --strategy ftl federates only "
            "a head over a pinned backbone (use --model, or --strategy fedavg/cfl/...)"
        )
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise CliError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    try:
        parse_broker_url(settings.broker)
        check_name("federation", settings.federation)
        make_strategy(settings.strategy, **settings.strategy_params)
        settings.limits.check()
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.dev_trust_on_first_use:
        logging.getLogger("ftlct.cloud").warning(
            "DEV MODE: --dev-trust-on-first-use accepts any site that signs its first update"
        )
    dashboard = _start_dashboard(settings) if settings.http else None
    try:
        run_server(settings)
    except (CloudStateError, ModelDirError, InitialModelError, IdentityError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        if dashboard is not None:
            dashboard.stop()


def _start_dashboard(settings):
    from ftlct.cloud.dashboard.http_server import DashboardServer, parse_http_address

    try:
        host, port = parse_http_address(settings.http)
        return DashboardServer(settings.state_path, host, port).start()
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"--http {settings.http}: {exc.strerror or exc}") from exc


@app.command()
def status(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    state_dir: Path = typer.Option(None, "--state-dir", help=STATE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Rounds, global versions, clusters, rejections and the fleet of site twins."""
    from ftlct.cloud.state import StateStore
    from ftlct.cloud.status_report import status_report, status_table

    settings = _settings(config, state_dir=str(state_dir) if state_dir else None)
    store = StateStore.open_existing(settings.state_path)
    if store is None:
        raise CliError(f"no cloud state in {settings.state_path} (has ftl-cloud serve run there?)")
    try:
        report = status_report(store)
    finally:
        store.close()
    if json_out:
        echo_json(report)
    else:
        print(status_table(report))


@app.command()
def identity(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    state_dir: Path = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """Create the cloud's Ed25519 key pair if absent; print its public key (the agents' --cloud-key)."""
    from ftlct.cloud.cloud_identity import cloud_identity
    from ftlct.protocol.identity import IdentityError

    settings = _settings(config, state_dir=str(state_dir) if state_dir else None)
    try:
        print(cloud_identity(settings).public_b64)
    except IdentityError as exc:
        raise CliError(str(exc)) from exc


@app.command()
def enroll(
    site: str = typer.Argument(..., help="Site id (as in the agent's --site)."),
    public_key: str = typer.Argument(
        ..., help="The site's public key, as `ftl-agent identity` prints it."
    ),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    state_dir: Path = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """Accept SITE's updates signed with PUBLIC_KEY (a running cloud picks it up at once)."""
    from ftlct.cloud.state import StateStore
    from ftlct.protocol.identity import IdentityError, public_key_from_b64
    from ftlct.protocol.topics import check_name

    try:
        check_name("site", site)
        public_key_from_b64(public_key)
    except (ValueError, IdentityError) as exc:
        raise CliError(str(exc)) from exc
    settings = _settings(config, state_dir=str(state_dir) if state_dir else None)
    store = StateStore.open(settings.state_path)
    try:
        previous = store.sites.enroll(site, public_key.strip())
    finally:
        store.close()
    if previous is None:
        print(f"enrolled {site}")
    elif previous == public_key.strip():
        print(f"{site} already enrolled with this key")
    else:
        print(f"re-enrolled {site} with a new key (the old one is no longer accepted)")


@app.command()
def doctor(
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    state_dir: Path = typer.Option(None, "--state-dir", help=STATE_HELP),
    broker: str = typer.Option(None, "--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    federation: str = typer.Option(None, "--federation", help="Federation name."),
    model: Path = typer.Option(None, "--model", help="Model directory of the first global head."),
    http: str = typer.Option(None, "--http", help="The dashboard's HOST:PORT."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.5, help="Seconds per network check."),
    json_out: bool = typer.Option(False, "--json", help="Print every check as JSON."),
) -> None:
    """Check settings, state dir, disk, keys, model, broker, dashboard, sites and clock; say
    what fixes each problem; exit 1 on any error. Changes nothing."""
    from ftlct.cloud.doctor import diagnose

    if config is not None and not config.is_file():
        raise CliError(f"--config {config}: no such file")
    flags = {
        "state_dir": str(state_dir) if state_dir else None,
        "broker": broker,
        "federation": federation,
        "model": str(model) if model else None,
        "http": http,
    }
    report = diagnose(config, flags, timeout)
    if json_out:
        echo_json(report.to_json())
    else:
        print(report.render())
    if report.failed:
        raise typer.Exit(1)


@app.command("broker-config")
def broker_config(
    sites: str = typer.Option(..., "--sites", help="Comma-separated site ids."),
    out: Path = typer.Option(..., "--out", help="Directory to write the broker setup into."),
    port: int = typer.Option(8883, "--port", min=1, max=65535, help="TLS listener port."),
    bind: str = typer.Option("0.0.0.0", "--bind", help="Address the listener binds."),
    hostname: list[str] = typer.Option(
        [],
        "--hostname",
        help="Name or IP sites dial (server certificate); repeatable. Default: localhost, 127.0.0.1.",
    ),
    cloud_user: str = typer.Option("cloud", "--cloud-user", help="MQTT user of the cloud."),
    run_as: str = typer.Option(
        None, "--run-as", help="Account mosquitto switches to when started as root (writes `user`)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths as JSON."),
    region: str = typer.Option(
        None,
        "--region",
        help="Write a regional broker for --sites, bridged over TLS to the central broker "
        "(needs --central and --central-address).",
    ),
    central: Path = typer.Option(
        None, "--central", help="With --region: the central broker's broker-config directory."
    ),
    central_address: str = typer.Option(
        None, "--central-address", help="With --region: HOST:PORT the bridge dials."
    ),
) -> None:
    """Write a mosquitto config: TLS (own CA), per-site client certificates as identities, ACLs;
    with --region, a regional broker bridged to the central one."""
    from ftlct.cloud.mosquitto_config import write_broker_config

    names = [s.strip() for s in sites.split(",") if s.strip()]
    if region is not None:
        _region_config(region, names, out, port, bind, hostname, run_as, central, central_address,
                       json_out)  # fmt: skip
        return
    if central is not None or central_address is not None:
        raise CliError("--central and --central-address go with --region")
    try:
        files = write_broker_config(out, names, port, bind, hostname or None, cloud_user, run_as)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if json_out:
        echo_json(
            {"conf": str(files.conf), "clients": {k: str(v) for k, v in files.clients.items()}}
        )
        return
    print(f"broker config: {files.conf}  (run: mosquitto -c {files.conf})")
    print(f"CA private key: {files.out / 'ca.key'} (move it offline once clients are issued)")
    for user, folder in files.clients.items():
        print(f"credentials for {user}: {folder}/ (mqtt.toml, {user}.crt/.key, ca.crt)")


def _region_config(region, sites, out, port, bind, hostname, run_as, central, address, json_out):
    from ftlct.cloud.broker_bridge import write_region_config

    if central is None or not address:
        raise CliError("--region needs --central DIR and --central-address HOST:PORT")
    try:
        files = write_region_config(
            out, region, sites, central, address, port, bind, hostname or None, run_as
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    broker = files.broker
    if json_out:
        echo_json(
            {
                "conf": str(broker.conf),
                "clients": {k: str(v) for k, v in broker.clients.items()},
                "bridge": str(files.bridge_dir),
                "central_user": files.central_user,
            }
        )
        return
    print(f"regional broker config: {broker.conf}  (run: mosquitto -c {broker.conf})")
    print(
        f"bridge credentials at the central broker: {files.bridge_dir}/ (user {files.central_user})"
    )
    print(f"central passwd and acl updated in {central}: send the central mosquitto SIGHUP")
    for user, folder in broker.clients.items():
        print(f"credentials for {user}: {folder}/ (mqtt.toml, {user}.crt/.key, ca.crt)")


def main() -> None:
    main_for(app, "ftl-cloud")
