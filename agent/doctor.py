"""``ftl-agent doctor``: is this edge box ready to serve, and if not, what fixes it.

Checks, in order: settings; data dir; free disk against ``storage.min_free_bytes``;
the DICOM and metrics ports; the model directory (and an installed federation
head) against its manifest's hashes; key and secret file modes; the broker (TCP,
TLS, login); the result destination (C-ECHO) and AE settings; the clock against
the round the cloud announced. Read-only: nothing is created or changed.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

from ftlct.protocol.diagnostics import (
    Diagnosis,
    bind_error,
    connectable_host,
    free_disk,
    private_file,
    round_clock,
)

PRIVATE_KEY_SUFFIX = ".ed25519"
REJECTED = "association rejected (calling or called AE title not accepted)"


def diagnose(config: Path | None, overrides: dict, timeout: float = 5.0) -> Diagnosis:
    from ftlct.agent.settings import SettingsError, load_settings

    report = Diagnosis()
    try:
        settings = load_settings(config, overrides=overrides)
    except SettingsError as exc:
        where = config or "the FTLCT_AGENT_* environment"
        report.error("config", str(exc), f"edit {where} (every key: deploy/agent.toml)")
        return report
    report.ok("config", f"settings load ({config or 'defaults + environment'})")
    data_dir = settings.storage.data_dir
    _data_dir(report, data_dir)
    report.add(
        free_disk(
            "disk",
            data_dir,
            settings.storage.min_free_bytes,
            2 * settings.storage.min_free_bytes,
            "storage.min_free_bytes",
        )
    )
    _dicom_port(report, settings, timeout)
    _metrics_port(report, settings)
    _model(report, settings.inference.model_dir, data_dir)
    _keys(report, settings, data_dir)
    announcement = _broker(report, settings, timeout)
    _ae(report, settings, timeout)
    if announcement is not None:
        report.add(round_clock(announcement, time.time()))
    return report


def _data_dir(report: Diagnosis, data_dir: Path) -> None:
    if not data_dir.exists():
        report.warning(
            "data dir",
            f"{data_dir} does not exist yet (serve creates it)",
            f"mkdir -m 700 {data_dir}",
        )
    elif not data_dir.is_dir():
        report.error(
            "data dir", f"{data_dir} is not a directory", "set storage.data_dir / --data-dir"
        )
    elif data_dir.stat().st_mode & 0o002:
        report.error("data dir", f"{data_dir} is writable by everyone", f"chmod 700 {data_dir}")
    else:
        report.ok("data dir", str(data_dir))


def _dicom_port(report: Diagnosis, settings, timeout: float) -> None:
    d = settings.dicom
    problem = bind_error(d.host, d.port)
    if problem is None:
        report.ok("dicom port", f"{d.host}:{d.port} is free to listen on")
        return
    if problem == errno.EACCES:
        report.error(
            "dicom port",
            f"port {d.port} needs privileges to bind",
            "use a port >= 1024 (dicom.port) or grant CAP_NET_BIND_SERVICE in the unit",
        )
        return
    if problem == errno.EADDRNOTAVAIL:
        report.error("dicom port", f"{d.host} is not an address of this machine", "fix dicom.host")
        return
    echo = _c_echo(d.ae_title, connectable_host(d.host), d.port, d.ae_title, timeout)
    if echo == REJECTED and d.allow_ae:
        report.ok(
            "dicom port",
            f"{d.host}:{d.port} in use by a DICOM node that refuses AE {d.ae_title} "
            "(the running agent with dicom.allow_ae)",
        )
    elif echo is None:
        report.ok(
            "dicom port",
            f"{d.host}:{d.port} in use by a DICOM node answering as {d.ae_title} (the agent, running)",
        )
    else:
        report.error(
            "dicom port",
            f"{d.host}:{d.port} is taken by another program ({echo})",
            f"find it with: ss -ltnp 'sport = :{d.port}'; or choose another dicom.port",
        )


def _metrics_port(report: Diagnosis, settings) -> None:
    m = settings.metrics
    if m.port == 0:
        return
    if bind_error(m.host, m.port) is None:
        report.ok("metrics port", f"{m.host}:{m.port} is free")
    else:
        report.warning(
            "metrics port",
            f"{m.host}:{m.port} is in use (by a running agent, or by another program)",
            f"ss -ltnp 'sport = :{m.port}'",
        )


def _model(report: Diagnosis, model_dir: Path, data_dir: Path) -> None:
    from ftlct.agent.sync.model_install import POINTER, models_dir
    from ftlct.export.model_dir import ModelDir, ModelDirError

    dirs = [("model", model_dir)]
    pointer = models_dir(data_dir) / POINTER
    if pointer.is_file():
        dirs.append(("installed head", models_dir(data_dir) / pointer.read_text().strip()))
    for what, path in dirs:
        try:
            problems = ModelDir.load(path).problems()
        except ModelDirError as exc:
            problems = [str(exc)]
        if not problems:
            report.ok("model", f"{what} {path} matches its manifest")
        elif what == "model":
            report.error(
                "model",
                f"{what}: {'; '.join(problems)}"
                if str(path) in problems[0]
                else f"{what} {path}: {'; '.join(problems)}",
                f"ftl-export verify {path}; rebuild with ftl-export build --out {path} (or set --model)",
            )
        else:  # serve falls back to --model's head; say so, do not fail the box
            report.warning(
                "model",
                f"{what} {path}: {'; '.join(problems)} (serve falls back to {model_dir})",
                f"rm {pointer}  # the next global model installs afresh",
            )


def _keys(report: Diagnosis, settings, data_dir: Path) -> None:
    from ftlct.agent.sync.site_identity import keys_dir

    keys = keys_dir(data_dir)
    site = settings.federation.site
    if keys.is_dir():
        if keys.stat().st_mode & 0o077:
            report.error("keys", f"{keys} is open to others", f"chmod 700 {keys}")
        for key in sorted(keys.glob(f"*{PRIVATE_KEY_SUFFIX}")):
            report.add(private_file("keys", key, "site private key", group_readable=False))
    if settings.federation.broker and site and not (keys / f"{site}{PRIVATE_KEY_SUFFIX}").is_file():
        report.error(
            "keys",
            f"no key pair for site {site} in {keys}",
            f"ftl-agent identity --site {site} --data-dir {data_dir}  # then ftl-cloud enroll at the operator",
        )
    secrets = [
        (settings.tls.key, "DICOM TLS key"),
        (settings.mqtt.key_file, "MQTT client key"),
        (settings.mqtt.password_file, "MQTT password file"),
    ]
    for path, what in secrets:
        if path:
            report.add(private_file("keys", Path(path), what))


def _broker(report: Diagnosis, settings, timeout: float):
    from ftlct.protocol.broker_probe import probe_broker
    from ftlct.protocol.errors import ProtocolError
    from ftlct.protocol.exchange import open_round
    from ftlct.protocol.identity import IdentityError, public_key_from_b64
    from ftlct.protocol.topics import Topics

    f = settings.federation
    if not f.broker:
        report.ok("broker", "no federation configured (inference only)")
        return None
    try:
        public_key_from_b64(f.cloud_key)
    except IdentityError as exc:
        report.error(
            "config",
            f"federation.cloud_key: {exc}",
            "set it to the line `ftl-cloud identity` prints at the operator",
        )
    topics = Topics(f.name)
    probe = probe_broker(f.broker, settings.mqtt, f.site or "agent", timeout, topics.rounds_current)
    for finding in probe.findings:
        report.add(finding)
    if not probe.logged_in:
        return None
    if probe.retained is None:
        report.warning(
            "round",
            f"no round announced on {topics.rounds_current} yet",
            "is ftl-cloud serve running for this federation? (ftl-cloud status)",
        )
        return None
    try:
        announcement = open_round(probe.retained, f.cloud_key, f.name)
    except ProtocolError as exc:
        report.error(
            "round",
            f"the announced round does not verify with federation.cloud_key: {exc.reason}",
            "set cloud_key to what `ftl-cloud identity` prints at the operator",
        )
        return None
    report.ok(
        "round", f"round {announcement.round} ({announcement.status}) verified with the cloud key"
    )
    return announcement


def _ae(report: Diagnosis, settings, timeout: float) -> None:
    from ftlct.agent.destination import parse_destination

    d = settings.dicom
    if not d.allow_ae and connectable_host(d.host) not in ("127.0.0.1", "::1", "localhost"):
        report.warning(
            "ae",
            f"{d.host}:{d.port} accepts associations from any calling AE title",
            'set dicom.allow_ae = ["<the PACS AE title>"]',
        )
    destination = settings.results.destination
    if not destination:
        report.warning(
            "ae",
            "no results.destination: SR results stay on this box",
            "set results.destination = AE@HOST:PORT (the PACS) or --result-destination",
        )
        return
    target = parse_destination(destination)
    problem = _c_echo(d.ae_title, target.host, target.port, target.ae_title, timeout)
    if problem is None:
        report.ok("ae", f"result destination {destination} answers C-ECHO from {d.ae_title}")
    else:
        report.error(
            "ae",
            f"result destination {destination}: {problem}",
            f"check the PACS accepts AE {d.ae_title} from this host: "
            f"echoscu -aet {d.ae_title} -aec {target.ae_title} {target.host} {target.port}",
        )


def _c_echo(calling: str, host: str, port: int, called: str, timeout: float) -> str | None:
    """None when ``called`` at ``host:port`` answers a C-ECHO, else what went wrong."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        if assoc.is_rejected:
            return REJECTED
        return "no DICOM association (nothing listening, or not a DICOM node)"
    try:
        status = assoc.send_c_echo()
        code = int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()
    return None if code == 0 else f"C-ECHO answered {code!r}"
