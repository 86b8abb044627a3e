"""``ftl-cloud broker-config``: a mosquitto 2.x setup for one federation's sites and the cloud.

Writes into OUT::

    mosquitto.conf       TLS listener (mutual TLS, identity from the certificate), ACL, queue limits
    ca.crt ca.key        the private CA (ca.key: keep it offline after issuing)
    server.crt server.key
    acl                  site X writes ftl/+/updates/X and ftl/+/twins/X/#, reads ftl/+/rounds/#,
                         ftl/+/model/#, ftl/+/best/# and its own ftl/+/receipts/X; the cloud
                         reads and writes ftl/#
    clients/NAME/        ca.crt, NAME.crt, NAME.key, mqtt.toml (an [mqtt] table)
    data/                mosquitto persistence (retained models survive a broker restart)

A client's identity is its certificate: ``use_identity_as_username`` makes the
certificate's common name the MQTT username the ACL is applied to, whatever
username the client sends. There are no passwords: mosquitto does not consult
a password file on such a listener, and a password next to a certificate let
one leaked password plus any site's certificate post into that site's topics.
The certificate's private key is the secret; keep ``clients/NAME/`` private.

Queue limits (per client, above the messages in flight) fit the fleet:
while the cloud restarts its persistent session holds a round's update from
every site and a few twin states each, so ``max_queued_messages`` is
``QUEUED_PER_SITE`` per site (at least mosquitto's default 1000). The cloud
itself asks for a wide in-flight window (MQTT v5 Receive Maximum).

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
QUEUED_PER_SITE = 10  # a round's update (and its resends) plus twin states, per site
MIN_QUEUED = 1000  # mosquitto's default


def mosquitto_password_hash(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """The ``$7$`` line format mosquitto 2.x reads: PBKDF2-HMAC-SHA512, base64 salt and hash.

    broker-config writes no password file any more; a bridge into a central broker
    configured before that still logs in with one (``broker_bridge.py``).
    """
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def max_queued_messages(n_sites: int) -> int:
    """The per-client queue limit for a federation of ``n_sites``."""
    return max(MIN_QUEUED, QUEUED_PER_SITE * n_sites)


def acl_text(sites: list[str], cloud_user: str) -> str:
    lines = [f"user {cloud_user}", "topic readwrite ftl/#", ""]
    for site in sites:
        lines += [
            f"user {site}",
            f"topic write ftl/+/updates/{site}",
            f"topic write ftl/+/twins/{site}/#",
            "topic read ftl/+/rounds/#",
            "topic read ftl/+/model/#",
            "topic read ftl/+/best/#",  # the best version so far (training.serve = best)
            f"topic read ftl/+/receipts/{site}",
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
    """Generate CA, certificates, ACL and ``mosquitto.conf`` under ``out``."""
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

    clients = {user: _write_client(out, ca, user) for user in [cloud_user, *sites]}
    atomic_write_bytes(out / "acl", acl_text(sites, cloud_user).encode(), mode=0o600)
    conf = out / "mosquitto.conf"
    text = _conf_text(out, port, bind, run_as, max_queued_messages(len(sites)))
    atomic_write_bytes(conf, text.encode(), mode=0o600)
    if run_as:
        _hand_over(out, run_as)
    return BrokerFiles(out, conf, clients)


def _write_client(out: Path, ca, user: str) -> Path:
    folder = out / "clients" / user
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    leaf = issue(ca, user)
    atomic_write_bytes(folder / "ca.crt", ca.cert_pem())
    atomic_write_bytes(folder / f"{user}.crt", leaf.cert_pem())
    atomic_write_bytes(folder / f"{user}.key", leaf.key_pem(), mode=0o600)
    toml = (
        "# MQTT credentials for the agent or cloud config ([mqtt] table); keep this folder private.\n"
        f"# The broker takes the user name from {user}.crt (its common name), whatever the\n"
        "# username below says; no password.\n"
        "[mqtt]\n"
        f'username = "{user}"\n'
        f'ca_file = "{folder / "ca.crt"}"\n'
        f'cert_file = "{folder / f"{user}.crt"}"\n'
        f'key_file = "{folder / f"{user}.key"}"\n'
    )
    atomic_write_bytes(folder / "mqtt.toml", toml.encode(), mode=0o600)
    return folder


def _conf_text(out: Path, port: int, bind: str, run_as: str | None, queued: int) -> str:
    lines = [
        "# written by ftl-cloud broker-config",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {out / 'acl'}",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"max_queued_messages {queued}",
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
        "use_identity_as_username true",
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
    for name in ("server.key", "acl", "mosquitto.conf", "ca.crt", "server.crt", "data"):
        os.chown(out / name, entry.pw_uid, entry.pw_gid)
