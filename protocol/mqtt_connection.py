"""One way to reach the broker for both agent and cloud: URL parsing, TLS, credentials, backoff.

``--broker`` is ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT``; credentials and
certificate paths come from ``MqttSettings`` (a config file or environment),
never from the command line. Clients speak MQTT v5 with paho-mqtt 2.x
(``CallbackAPIVersion.VERSION2``); paho's network thread reconnects with
exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass
class MqttSettings:
    """How to authenticate to the broker (from TOML ``[mqtt]`` or ``*_MQTT_*`` env variables)."""

    username: str = ""
    password: str = ""
    password_file: str = ""  # read at connect; preferred over ``password`` in files
    ca_file: str = ""  # trust anchor for mqtts:// (default: the system store)
    cert_file: str = ""  # client certificate (mutual TLS)
    key_file: str = ""
    keepalive: int = 30
    session_expiry_s: int = 7 * 24 * 3600  # persistent sessions keep QoS 1 messages while away
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    # MQTT v5 Receive Maximum: how many QoS 1 messages the broker may send before our PUBACKs
    # (0: not sent, mosquitto then allows its max_inflight_messages, 20). A subscriber that
    # commits in batches needs a wide window, or the broker queues and, past its limit, drops.
    receive_maximum: int = 0

    def resolved_password(self) -> str:
        if self.password_file:
            return Path(self.password_file).read_text().strip()
        return self.password


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt[s]://HOST[:PORT]`` -> ``BrokerUrl``; ``ValueError`` with the reason otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if parts.username or parts.password:
        raise ValueError("put broker credentials in the config file or environment, not the URL")
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"broker URL must be mqtt[s]://HOST:PORT, got {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"bad port in broker URL {url!r}") from exc
    return BrokerUrl(parts.hostname, port, parts.scheme == "mqtts")


def new_client(
    client_id: str,
    broker: BrokerUrl,
    settings: MqttSettings,
    *,
    manual_ack: bool = False,
    will: tuple[str, bytes] | None = None,
) -> mqtt.Client:
    """A configured, not yet connected MQTT v5 client (``will`` = (topic, payload), retained)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.resolved_password() or None)
    if broker.tls:
        client.tls_set(
            ca_certs=settings.ca_file or None,
            certfile=settings.cert_file or None,
            keyfile=settings.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    return client


def start(client: mqtt.Client, broker: BrokerUrl, settings: MqttSettings, persistent: bool) -> None:
    """Connect in paho's network thread, retrying with backoff until it succeeds.

    ``persistent``: resume the broker-side session (clean_start False, with an
    expiry) so QoS 1 messages published while this client was away are delivered.
    """
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.session_expiry_s if persistent else 0
    if settings.receive_maximum:
        properties.ReceiveMaximum = settings.receive_maximum
    client.connect_async(
        broker.host,
        broker.port,
        keepalive=settings.keepalive,
        clean_start=not persistent,
        properties=properties,
    )
    client.loop_start()
