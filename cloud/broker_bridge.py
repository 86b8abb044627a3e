"""``ftl-cloud broker-config --region R``: a regional mosquitto bridged to the central broker.

Sites of a region connect to their regional broker; its own bridge (mosquitto's
``connection`` section) carries their topics to the central broker, where the
cloud runs, over mutual TLS. Writes into OUT what ``write_broker_config`` writes
for the region's sites (its own CA, per-site credentials, ACLs: a site writes
only its own topics), plus::

    bridge/          central-ca.crt, region-R.crt/.key (issued by the central CA, common
                     name region-R: the bridge's identity at the central broker)
    mosquitto.conf   ... and the bridge section (BRIDGE_TOPICS, QoS 1, persistent session)

and adds the user ``region-R`` to the central broker's ``acl`` (in the central
broker-config directory): it may write exactly the region's sites' topics and
read what the cloud publishes for them. A central broker that still checks
passwords (a ``passwd`` file beside its ``acl``) also gets the bridge's password
(``bridge/password``). Send the central mosquitto SIGHUP (or restart it) to load them.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ftlct.cloud.mosquitto_config import BrokerFiles, write_broker_config
from ftlct.cloud.pki import KeyAndCert, issue
from ftlct.export.files import atomic_write_bytes
from ftlct.protocol.topics import check_name

# Every topic the bridge carries, under ftl/+/ (any federation), with its direction seen
# from the region: "out" = site -> cloud, "in" = cloud -> site. "{site}" expands once per
# site of the region. The same table writes the central ACL of the region's bridge user.
BRIDGE_TOPICS: tuple[tuple[str, str], ...] = (
    ("updates/{site}", "out"),
    ("twins/{site}/#", "out"),
    ("rounds/#", "in"),
    ("model/#", "in"),
    ("best/#", "in"),  # each cluster's best version so far (agents with training.serve = best)
    ("receipts/{site}", "in"),  # the cloud's signed verdict on each of the site's updates
)
BRIDGE_QOS = 1
BRIDGE_DIR = "bridge"


def region_user(region: str) -> str:
    return f"region-{region}"


def bridge_topics(sites: list[str]) -> list[tuple[str, str]]:
    """``[(topic pattern, direction)]`` for the region's sites, each pattern once."""
    topics: list[tuple[str, str]] = []
    for pattern, direction in BRIDGE_TOPICS:
        names = sites if "{site}" in pattern else [None]
        for site in names:
            entry = (f"ftl/+/{pattern.format(site=site)}", direction)
            if entry not in topics:
                topics.append(entry)
    return topics


def central_acl_block(region: str, sites: list[str]) -> str:
    """The central broker's ACL for the region's bridge user (its sites' topics only)."""
    verb = {"out": "write", "in": "read"}
    lines = [f"user {region_user(region)}"]
    lines += [f"topic {verb[direction]} {topic}" for topic, direction in bridge_topics(sites)]
    return "\n".join(lines) + "\n"


def bridge_section(
    region: str, sites: list[str], central_address: str, bridge_dir: Path, password: str | None
) -> str:
    user = region_user(region)
    lines = [
        "",
        "# bridge to the central broker (ftl-cloud broker-config --region)",
        f"connection ftl-{user}",
        f"address {central_address}",
        f"remote_clientid ftl-bridge-{region}",
        f"local_clientid ftl-bridge-{region}-local",
        f"remote_username {user}",
        *([f"remote_password {password}"] if password else []),
        f"bridge_cafile {bridge_dir / 'central-ca.crt'}",
        f"bridge_certfile {bridge_dir / f'{user}.crt'}",
        f"bridge_keyfile {bridge_dir / f'{user}.key'}",
        "bridge_tls_version tlsv1.2",
        "bridge_insecure false",
        "bridge_protocol_version mqttv311",
        # the central broker keeps the bridge's subscriptions and queued QoS 1 messages
        # across a broken link; the regional one queues the sites' updates meanwhile
        "cleansession false",
        "try_private true",  # mosquitto-to-mosquitto: retained flags and loop detection hold
        "notifications true",
        "notifications_local_only true",  # $SYS/broker/connection/... state, on the region only
        "keepalive_interval 30",
        "restart_timeout 2 60",
        "start_type automatic",
    ]
    lines += [
        f"topic {topic} {direction} {BRIDGE_QOS}" for topic, direction in bridge_topics(sites)
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RegionFiles:
    broker: BrokerFiles  # the regional broker (conf, sites' credentials)
    bridge_dir: Path
    central_user: str


def write_region_config(
    out: Path,
    region: str,
    sites: list[str],
    central_dir: Path,
    central_address: str,
    port: int = 8883,
    bind: str = "0.0.0.0",
    hostnames: list[str] | None = None,
    run_as: str | None = None,
) -> RegionFiles:
    """The regional broker in ``out``; the region's bridge user added to ``central_dir``."""
    check_name("region", region)
    user = region_user(region)
    if user in sites:
        raise ValueError(f"{user!r} is the bridge's user name; pick another site name")
    if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", central_address):
        raise ValueError(f"--central-address wants HOST:PORT, got {central_address!r}")
    central_dir = central_dir.resolve()
    for name in ("ca.crt", "ca.key", "acl"):
        if not (central_dir / name).is_file():
            raise ValueError(
                f"--central {central_dir}: no {name} (give the directory "
                "`ftl-cloud broker-config --sites ... --out DIR` wrote for the central broker)"
            )
    central_ca = _load_ca(central_dir)
    # the regional broker's own users: an operator account (the central "cloud" role) + sites
    broker = write_broker_config(
        out, sites, port, bind, hostnames, cloud_user=f"operator-{region}", run_as=run_as
    )
    bridge_dir = broker.out / BRIDGE_DIR
    bridge_dir.mkdir(exist_ok=True, mode=0o700)
    leaf = issue(central_ca, user)
    atomic_write_bytes(bridge_dir / "central-ca.crt", central_ca.cert_pem())
    atomic_write_bytes(bridge_dir / f"{user}.crt", leaf.cert_pem())
    atomic_write_bytes(bridge_dir / f"{user}.key", leaf.key_pem(), mode=0o600)
    password = None
    if (central_dir / "passwd").is_file():  # a central broker that checks passwords
        password = secrets.token_urlsafe(24)
        atomic_write_bytes(bridge_dir / "password", (password + "\n").encode(), mode=0o600)
        _add_central_password(central_dir / "passwd", user, password)
    conf = broker.conf.read_text() + bridge_section(
        region, sites, central_address, bridge_dir, password
    )
    _rewrite(broker.conf, conf)
    _add_central_acl(central_dir / "acl", user, central_acl_block(region, sites))
    if run_as:  # the regional broker reads the bridge's key after dropping to run_as
        _same_owner(broker.conf, bridge_dir, bridge_dir / f"{user}.key")
    return RegionFiles(broker, bridge_dir, user)


def _load_ca(central_dir: Path) -> KeyAndCert:
    key = serialization.load_pem_private_key((central_dir / "ca.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((central_dir / "ca.crt").read_bytes())
    return KeyAndCert(key, cert)


def _add_central_password(passwd: Path, user: str, password: str) -> None:
    """Replace (or add) ``user``'s line in mosquitto's password file, keeping the others."""
    from ftlct.cloud.mosquitto_config import mosquitto_password_hash

    lines = [ln for ln in passwd.read_text().splitlines() if not ln.startswith(f"{user}:")]
    lines.append(f"{user}:{mosquitto_password_hash(password)}")
    _rewrite(passwd, "\n".join(lines) + "\n")


def _add_central_acl(acl: Path, user: str, acl_block: str) -> None:
    """Replace (or add) ``user``'s block of the ACL, keeping every other block."""
    blocks = [b for b in acl.read_text().split("\n\n") if b.strip()]
    blocks = [b for b in blocks if b.strip().splitlines()[0].strip() != f"user {user}"]
    blocks.append(acl_block.strip())
    _rewrite(acl, "\n\n".join(b.strip() for b in blocks) + "\n")


def _rewrite(path: Path, text: str) -> None:
    """Atomically, with the file's mode and (when we may) owner: the broker must still read it."""
    before = path.stat()
    atomic_write_bytes(path, text.encode(), mode=before.st_mode & 0o777)
    if os.geteuid() == 0 and (before.st_uid, before.st_gid) != (0, 0):
        os.chown(path, before.st_uid, before.st_gid)


def _same_owner(reference: Path, *paths: Path) -> None:
    owner = reference.stat()
    if os.geteuid() == 0:
        for path in paths:
            os.chown(path, owner.st_uid, owner.st_gid)
