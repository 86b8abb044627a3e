"""``ftl-cloud doctor``: can this cloud serve its federation, and if not, what fixes it.

Checks: settings (broker URL, federation name, strategy and its parameters);
the state dir (mode, database integrity, which federation it belongs to);
free disk; the cloud's key, the dashboard token and MQTT secrets (modes); the
starting model (a head's model directory against its hashes and the
federation's pinned backbone, or a whole network's file); the broker (TCP, TLS,
login as the cloud); the dashboard address; enrolled sites against
``min_sites``; the clock against the last round this state recorded.
Read-only: the state DB is opened read-only, nothing is created.
"""

from __future__ import annotations

import errno
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from ftlct.protocol.diagnostics import (
    CLOCK_TOLERANCE_S,
    Diagnosis,
    bind_error,
    connectable_host,
    free_disk,
    private_file,
)

DISK_ERROR_BYTES = 256 * 2**20  # a round's state is small; below this SQLite writes may fail
DISK_WARN_BYTES = 2**30


def diagnose(config: Path | None, flags: dict, timeout: float = 5.0) -> Diagnosis:
    from ftlct.cloud.settings import load_cloud_settings
    from ftlct.cloud.strategies import make_strategy
    from ftlct.protocol.mqtt_connection import parse_broker_url
    from ftlct.protocol.settings import SettingsError
    from ftlct.protocol.topics import check_name

    report = Diagnosis()
    where = config or "the FTLCT_CLOUD_* environment"
    try:
        settings = load_cloud_settings(config, **flags)
        parse_broker_url(settings.broker)
        check_name("federation", settings.federation)
        make_strategy(settings.strategy, **settings.strategy_params)
    except (SettingsError, ValueError, TypeError) as exc:
        report.error("config", str(exc), f"edit {where} (every key: deploy/cloud.toml)")
        return report
    report.ok("config", f"settings load ({config or 'defaults + environment'})")
    state = settings.state_path
    store = _state_dir(report, settings)
    try:
        report.add(free_disk("disk", state, DISK_ERROR_BYTES, DISK_WARN_BYTES))
        _secrets(report, settings)
        _model(report, settings, store)
        _sites(report, settings, store)
        _clock(report, store)
    finally:
        if store is not None:
            store.close()
    _broker(report, settings, timeout)
    _dashboard(report, settings, timeout)
    return report


def _state_dir(report: Diagnosis, settings):
    from ftlct.cloud.state import StateStore

    state = settings.state_path
    if not state.exists():
        report.warning(
            "state dir",
            f"{state} does not exist: a new federation starts there",
            f"ftl-cloud identity --state-dir {state}  # creates it and the cloud's key",
        )
        return None
    if state.stat().st_mode & 0o077:
        report.error("state dir", f"{state} is open to others", f"chmod 700 {state}")
    store = StateStore.open_read_only(state)
    if store is None:
        report.ok("state dir", f"{state} (no federation state yet)")
        return None
    try:
        verdict = store.db.execute("PRAGMA quick_check").fetchone()[0]
        federation = store.meta.get("federation")
    except sqlite3.Error as exc:
        report.error(
            "state dir",
            f"{store.path} unreadable: {exc}",
            f"stop ftl-cloud, keep a copy of {state}, restore the last backup",
        )
        store.close()
        return None
    if verdict != "ok":
        report.error(
            "state dir",
            f"{store.path} fails SQLite's integrity check: {verdict}",
            f"stop ftl-cloud, keep a copy of {state}, restore the last backup",
        )
    elif federation is not None and federation != settings.federation:
        report.error(
            "state dir",
            f"{state} belongs to federation {federation!r}, the settings say {settings.federation!r}",
            f"--federation {federation}, or another --state-dir for {settings.federation}",
        )
    else:
        report.ok("state dir", f"{store.path} passes the integrity check")
    return store


def _secrets(report: Diagnosis, settings) -> None:
    from ftlct.cloud.cloud_identity import CLOUD_IDENTITY, KEYS_DIR
    from ftlct.cloud.dashboard.access_token import TOKEN_FILE

    state = settings.state_path
    key = state / KEYS_DIR / f"{CLOUD_IDENTITY}.ed25519"
    if key.is_file():
        report.add(private_file("keys", key, "cloud private key", group_readable=False))
    elif state.exists():
        report.warning(
            "keys",
            f"no cloud key in {key.parent} yet (serve creates it; the sites need its public half)",
            f"ftl-cloud identity --state-dir {state}",
        )
    token = state / TOKEN_FILE
    if token.is_file():
        report.add(private_file("keys", token, "dashboard token", group_readable=False))
    for path, what in ((settings.mqtt.key_file, "MQTT client key"),
                       (settings.mqtt.password_file, "MQTT password file")):  # fmt: skip
        if path:
            report.add(private_file("keys", Path(path), what))


def _model(report: Diagnosis, settings, store) -> None:
    from ftlct.cloud.initial_model import InitialModelError, network_from_file
    from ftlct.export.model_dir import ModelDir, ModelDirError

    running = store is not None and store.meta.get("kind") is not None
    if settings.initial_weights:
        try:
            network = network_from_file(settings.initial_weights)
        except (InitialModelError, OSError, ValueError) as exc:
            report.error(
                "model", f"--initial-weights: {exc}", "give the safetensors file of the network"
            )
            return
        report.ok("model", f"{settings.initial_weights}: {len(network.weights)} tensors")
        return
    path = Path(settings.model)
    if running and (store.meta.get("kind") == "network" or not (path / "manifest.json").is_file()):
        report.ok("model", "the federation's state holds its model (no --model needed)")
        return
    try:
        model = ModelDir.load(path)
        problems = model.problems()
    except ModelDirError as exc:
        model, problems = None, [str(exc)]
    if problems:
        report.error(
            "model",
            f"{path}: {'; '.join(problems)}",
            f"ftl-export verify {path}; rebuild with ftl-export build --out {path}",
        )
        return
    pinned = store.meta.get("backbone_sha256") if running else None
    if pinned and pinned != model.backbone_sha256:
        report.error(
            "model",
            f"{path} has backbone {model.backbone_sha256[:12]}, the federation pins {pinned[:12]}",
            "give the federation's model directory (--model) or start a new state dir",
        )
        return
    report.ok("model", f"{path} ({model.version}) matches its manifest")


def _sites(report: Diagnosis, settings, store) -> None:
    enrolled = store.sites.enrolled() if store is not None else {}
    if not enrolled:
        report.warning(
            "sites",
            "no site enrolled: every update will be refused",
            "ftl-cloud enroll SITE PUBLIC_KEY  # the key `ftl-agent identity` prints at the site",
        )
    elif len(enrolled) < settings.min_sites:
        report.warning(
            "sites",
            f"{len(enrolled)} site(s) enrolled but min_sites = {settings.min_sites}: "
            "no round can close",
            "enroll more sites, or lower min_sites",
        )
    else:
        report.ok("sites", f"{len(enrolled)} site(s) enrolled, min_sites {settings.min_sites}")


def _clock(report: Diagnosis, store) -> None:
    last = store.rounds.last() if store is not None else None
    if last is None:
        return
    ahead = last.opened_at - time.time()
    if ahead > CLOCK_TOLERANCE_S:
        report.error(
            "clock",
            f"round {last.round} was opened {ahead:.0f} s in this clock's future: "
            "the clock went back since (deadlines would stall)",
            "sync the clock: timedatectl set-ntp true",
        )
    else:
        report.ok("clock", f"consistent with round {last.round}, opened by this state")


def _broker(report: Diagnosis, settings, timeout: float) -> None:
    from ftlct.protocol.broker_probe import probe_broker

    for finding in probe_broker(settings.broker, settings.mqtt, "cloud", timeout).findings:
        report.add(finding)


def _dashboard(report: Diagnosis, settings, timeout: float) -> None:
    from ftlct.cloud.dashboard.http_server import parse_http_address

    if not settings.http:
        return
    try:
        host, port = parse_http_address(settings.http)
    except ValueError as exc:
        report.error("dashboard", str(exc), "http = HOST:PORT")
        return
    problem = bind_error(host, port)
    if problem is None:
        report.ok("dashboard", f"{host}:{port} is free")
        if connectable_host(host) not in ("127.0.0.1", "::1", "localhost"):
            report.warning(
                "dashboard",
                f"{host}:{port} is beyond loopback",
                "bind 127.0.0.1 and reach it over an SSH tunnel or an HTTPS proxy",
            )
        return
    if problem == errno.EACCES:
        report.error("dashboard", f"port {port} needs privileges", "use a port >= 1024")
        return
    try:  # a running cloud's dashboard answers 401 with its realm
        urllib.request.urlopen(f"http://{connectable_host(host)}:{port}/", timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and "ftl-cloud" in exc.headers.get("WWW-Authenticate", ""):
            report.ok("dashboard", f"{host}:{port} is the running cloud's dashboard")
            return
    except OSError:
        pass
    report.error(
        "dashboard",
        f"{host}:{port} is taken by another program",
        f"ss -ltnp 'sport = :{port}'; or choose another http port",
    )
