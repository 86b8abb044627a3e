"""Can this program reach its broker? TCP, then TLS, then the MQTT login, each judged apart.

The doctors (``ftl-agent doctor``, ``ftl-cloud doctor``) call ``probe_broker``:
each stage that fails says why and what fixes it, and the probe can read one
retained topic (the round announcement, for the clock check). It connects with
a client id of its own and a clean session, so a running agent's or cloud's
persistent session is never taken over.
"""

from __future__ import annotations

import datetime
import secrets
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ftlct.protocol.diagnostics import ERROR, OK, WARNING, Finding
from ftlct.protocol.mqtt_connection import MqttSettings, new_client, parse_broker_url

CHECK = "broker"
CERT_WARN_DAYS = 30


@dataclass
class ProbeResult:
    findings: list[Finding] = field(default_factory=list)
    retained: bytes | None = None  # the retained message on ``read_topic``, if any

    @property
    def logged_in(self) -> bool:
        return any(f.level == OK and f.message.startswith("logged in") for f in self.findings)


def probe_broker(
    url: str, settings: MqttSettings, who: str, timeout: float = 5.0, read_topic: str = ""
) -> ProbeResult:
    result = ProbeResult()
    say = result.findings.append
    try:
        broker = parse_broker_url(url)
    except ValueError as exc:
        say(Finding(CHECK, ERROR, str(exc), "set --broker / broker = mqtts://HOST:PORT"))
        return result
    try:
        raw = socket.create_connection((broker.host, broker.port), timeout=timeout)
    except OSError as exc:
        say(
            Finding(
                CHECK,
                ERROR,
                f"cannot reach {broker.host}:{broker.port}: {exc.strerror or exc}",
                f"start the broker or open the firewall; test with: nc -vz {broker.host} {broker.port}",
            )
        )
        return result
    say(Finding(CHECK, OK, f"{broker.host}:{broker.port} accepts TCP connections"))
    if broker.tls:
        if not _tls_handshake(raw, broker.host, settings, timeout, say):
            return result
    else:
        raw.close()
        if broker.host not in ("127.0.0.1", "localhost", "::1"):
            say(
                Finding(
                    CHECK,
                    WARNING,
                    f"plain MQTT to {broker.host}: passwords, updates and twins travel unencrypted",
                    f"use mqtts://{broker.host}:8883 with the ca.crt broker-config wrote",
                )
            )
    for path, what in ((settings.cert_file, "client certificate"),):
        if path:
            result.findings += _certificate_expiry(Path(path), what)
    _login(broker, settings, who, timeout, read_topic, result)
    return result


def _tls_handshake(raw: socket.socket, host: str, settings: MqttSettings, timeout, say) -> bool:
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        say(
            Finding(
                CHECK,
                ERROR,
                f"TLS files unusable (ca_file {settings.ca_file or '-'}, cert_file "
                f"{settings.cert_file or '-'}, key_file {settings.key_file or '-'}): {exc}",
                "point [mqtt] ca_file, cert_file, key_file at the files in clients/NAME/",
            )
        )
        return False
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(timeout)
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        mismatch = "match" in str(exc.verify_message or "").lower() or "hostname" in str(exc)
        fix = (
            f"dial a name the server certificate has, or re-issue it: "
            f"ftl-cloud broker-config --hostname {host} ..."
            if mismatch
            else "set [mqtt] ca_file to the ca.crt that broker-config wrote (clients/NAME/ca.crt)"
        )
        say(
            Finding(
                CHECK,
                ERROR,
                f"TLS: the broker's certificate is not accepted: {exc.verify_message}",
                fix,
            )
        )
        return False
    except (OSError, ssl.SSLError) as exc:
        say(
            Finding(
                CHECK,
                ERROR,
                f"TLS handshake with {host} failed: {exc}",
                "is this port the broker's TLS listener? (mqtt:// vs mqtts://, 1883 vs 8883)",
            )
        )
        return False
    say(Finding(CHECK, OK, f"TLS ({version}) with a trusted server certificate for {host}"))
    return True


def _certificate_expiry(path: Path, what: str) -> list[Finding]:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [Finding(CHECK, ERROR, f"{what} {path} unreadable: {exc}", f"ls -l {path}")]
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left.total_seconds() <= 0:
        return [Finding(CHECK, ERROR, f"{what} {path} expired", "issue a new one (broker-config)")]
    if left.days < CERT_WARN_DAYS:
        return [
            Finding(CHECK, WARNING, f"{what} {path} expires in {left.days} days", "issue a new one")
        ]
    return []


def _login(broker, settings: MqttSettings, who: str, timeout, read_topic, result) -> None:
    say = result.findings.append
    try:
        password_ok = bool(settings.resolved_password())
    except OSError as exc:
        say(
            Finding(
                CHECK,
                ERROR,
                f"[mqtt] password_file {settings.password_file}: {exc.strerror or exc}",
                "point password_file at clients/NAME/password",
            )
        )
        return
    client = new_client(f"doctor-{who}-{secrets.token_hex(4)}", broker, settings)
    connected, received = threading.Event(), threading.Event()
    answer: dict = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        answer["code"] = reason_code
        answer["connack"] = True
        connected.set()
        if not reason_code.is_failure and read_topic:
            client.subscribe(read_topic, qos=1)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        answer.setdefault("code", reason_code)
        connected.set()

    def on_message(client, userdata, message):
        if message.retain:
            result.retained = bytes(message.payload)
            received.set()

    client.on_connect, client.on_disconnect, client.on_message = (
        on_connect,
        on_disconnect,
        on_message,
    )
    try:
        client.connect(broker.host, broker.port, keepalive=max(5, int(timeout) * 2))
    except (OSError, ssl.SSLError) as exc:
        say(Finding(CHECK, ERROR, f"MQTT connect failed: {exc}", "see the TLS findings above"))
        return
    client.loop_start()
    try:
        if not connected.wait(timeout):
            say(Finding(CHECK, ERROR, "no CONNACK from the broker", "is it an MQTT broker?"))
            return
        code = answer["code"]
        if not answer.get("connack"):
            say(
                Finding(
                    CHECK,
                    ERROR,
                    "the broker closed the connection before answering the login",
                    "a client certificate is required: set [mqtt] cert_file and key_file",
                )
            )
        elif code.is_failure:
            user = settings.username or "(none)"
            say(
                Finding(
                    CHECK,
                    ERROR,
                    f"the broker refused the login of user {user}: {code}"
                    + ("" if password_ok else " (no password set)"),
                    "set [mqtt] username and password_file to the ones broker-config wrote "
                    "(clients/NAME/mqtt.toml)",
                )
            )
        else:
            say(Finding(CHECK, OK, f"logged in as {settings.username or '(anonymous)'}"))
            if read_topic:
                received.wait(min(timeout, 3.0))
    finally:
        client.disconnect()
        client.loop_stop()
