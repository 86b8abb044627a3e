"""``ftl-cloud broker-config``: a mosquitto 2.x setup for one federation's sites and the cloud.

Writes into OUT::

    mosquitto.conf       TLS listener (mutual TLS + passwords), ACL, password file
    ca.crt ca.key        the private CA (ca.key: keep it offline after issuing)
    server.crt server.key
    passwd               mosquitto's PBKDF2-SHA512 "$7$" hashes, one line per user
    acl                  site X writes ftl/+/updates/X and ftl/+/twins/X/#,
                         reads ftl/+/rounds/# and ftl/+/model/#; the cloud reads and writes ftl/#
    clients/NAME/        ca.crt, NAME.crt, NAME.key, password, mqtt.toml (an [mqtt] table)
    data/                mosquitto persistence (retained models survive a broker restart)

When mosquitto starts as root it switches to the user named by ``user`` (its
default is ``mosquitto``): ``--run-as`` writes that line, and the files the
broker reads are made readable to that user.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path

from ftlct.cloud.pki import issue, make_ca
from ftlct.export.files import atomic_write_bytes
from ftlct.protocol.topics import check_name

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12
MAX_PACKET_BYTES = 70 * 1024 * 1024  # above the largest envelope (protocol.envelope.MAX_BYTES)


def mosquitto_password_hash(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """The ``$7$`` line format mosquitto 2.x reads: PBKDF2-HMAC-SHA512, base64 salt and hash."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(sites: list[str], cloud_user: str) -> str:
    lines = [f"user {cloud_user}", "topic readwrite ftl/#", ""]
    for site in sites:
        lines += [
            f"user {site}",
            f"topic write ftl/+/updates/{site}",
            f"topic write ftl/+/twins/{site}/#",
            "topic read ftl/+/rounds/#",
            "topic read ftl/+/model/#",
            "",
        ]
    return "\n".join(lines)


@dataclass(frozen=True)
class BrokerFiles:
    out: Path
    conf: Path
    clients: dict[str, Path]  # user -> its credentials directory


def write_broker_config(
    out: Path,
    sites: list[str],
    port: int = 8883,
    bind: str = "0.0.0.0",
    hostnames: list[str] | None = None,
    cloud_user: str = "cloud",
    run_as: str | None = None,
) -> BrokerFiles:
    """Generate CA, certificates, passwords, ACL and ``mosquitto.conf`` under ``out``."""
    for site in sites:
        check_name("site", site)
    check_name("cloud user", cloud_user)
    if cloud_user in sites:
        raise ValueError(f"{cloud_user!r} is the cloud's user name; pick another site name")
    if len(set(sites)) != len(sites) or not sites:
        raise ValueError("--sites needs one or more distinct names")
    hostnames = hostnames or ["localhost", "127.0.0.1"]
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)

    ca = make_ca()
    server = issue(ca, hostnames[0], hostnames)
    atomic_write_bytes(out / "ca.crt", ca.cert_pem())
    atomic_write_bytes(out / "ca.key", ca.key_pem(), mode=0o600)
    atomic_write_bytes(out / "server.crt", server.cert_pem())
    atomic_write_bytes(out / "server.key", server.key_pem(), mode=0o600)

    password_lines, clients = [], {}
    for user in [cloud_user, *sites]:
        password = secrets.token_urlsafe(24)
        password_lines.append(f"{user}:{mosquitto_password_hash(password)}")
        clients[user] = _write_client(out, ca, user, password)
    atomic_write_bytes(out / "passwd", ("\n".join(password_lines) + "\n").encode(), mode=0o600)
    atomic_write_bytes(out / "acl", acl_text(sites, cloud_user).encode(), mode=0o600)
    conf = out / "mosquitto.conf"
    atomic_write_bytes(conf, _conf_text(out, port, bind, run_as).encode(), mode=0o600)
    if run_as:
        _hand_over(out, run_as)
    return BrokerFiles(out, conf, clients)


def _write_client(out: Path, ca, user: str, password: str) -> Path:
    folder = out / "clients" / user
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    leaf = issue(ca, user)
    atomic_write_bytes(folder / "ca.crt", ca.cert_pem())
    atomic_write_bytes(folder / f"{user}.crt", leaf.cert_pem())
    atomic_write_bytes(folder / f"{user}.key", leaf.key_pem(), mode=0o600)
    atomic_write_bytes(folder / "password", (password + "\n").encode(), mode=0o600)
    toml = (
        "# MQTT credentials for the agent or cloud config ([mqtt] table); keep this folder private\n"
        "[mqtt]\n"
        f'username = "{user}"\n'
        f'password_file = "{folder / "password"}"\n'
        f'ca_file = "{folder / "ca.crt"}"\n'
        f'cert_file = "{folder / f"{user}.crt"}"\n'
        f'key_file = "{folder / f"{user}.key"}"\n'
    )
    atomic_write_bytes(folder / "mqtt.toml", toml.encode(), mode=0o600)
    return folder


def _conf_text(out: Path, port: int, bind: str, run_as: str | None) -> str:
    lines = [
        "# written by ftl-cloud broker-config",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "max_queued_messages 10000",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if run_as:
        lines.append(f"user {run_as}")
    lines += [
        "",
        f"listener {port} {bind}",
        "protocol mqtt",
        f"cafile {out / 'ca.crt'}",
        f"certfile {out / 'server.crt'}",
        f"keyfile {out / 'server.key'}",
        "require_certificate true",
        "tls_version tlsv1.2",
        "",
    ]
    return "\n".join(lines)


def _hand_over(out: Path, user: str) -> None:
    """Let ``user`` (the broker's run-as account) read its files, when we may change owners."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ValueError(f"--run-as {user}: no such user on this machine") from exc
    if os.geteuid() != 0 or entry.pw_uid == os.geteuid():
        return
    for name in ("server.key", "passwd", "acl", "mosquitto.conf", "ca.crt", "server.crt", "data"):
        os.chown(out / name, entry.pw_uid, entry.pw_gid)
