"""``FederationSync``: the serve component that makes the agent a member of the federation.

One loop thread (``BackgroundLoop``) does everything the MQTT link queues:

* ``rounds/current``: verified with the cloud key, stored (``train`` works
  offline from it), then training is re-planned;
* ``model/{cluster}``: verified (signature, body hash, backbone, labels), stored,
  and for this site's cluster installed through the gate (``ModelInstaller``);
* the outbox: every signed update is published (QoS 1) and its row deleted
  only when the broker's PUBACK for that message id arrives; paho resends
  unacknowledged messages after a reconnect, and rows left from an earlier
  run are published again at start (update ids make resends harmless);
* training (``TrainingSchedule``): every ``training.check_interval_s`` the round
  is planned (new labels count for the open round) and, when it can train, a
  child process trains from the plan; the delta it returns is sealed, signed
  and queued in the outbox (``UpdateRelease``);
* a heartbeat in the index so ``ftl-agent status`` can tell whether serve is connected.

Messages that fail verification are logged with their reason, counted in
``model_events`` (models) or the ``sync.rounds_refused`` meta, and dropped.
"""

from __future__ import annotations

import logging
import queue
import time

from ftlct.agent.background import BackgroundLoop
from ftlct.agent.labels.label_store import SCHEMA as LABELS_SCHEMA
from ftlct.agent.logs import log_event
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import AgentSettings
from ftlct.agent.sync.local_rounds import TrainingSchedule
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.sync.model_install import ModelInstaller
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.round_plan import RoundPlanner
from ftlct.agent.sync.site_identity import remember_names, site_identity
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.sync.update_release import UpdateRelease
from ftlct.agent.training.labelled_data import count_labelled
from ftlct.agent.training.runner import TrainingRunner
from ftlct.protocol.errors import ProtocolError
from ftlct.protocol.exchange import build_offline_will, open_global_model, open_round
from ftlct.protocol.topics import Topics, parse_topic

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
RESEND_AFTER_S = 120.0  # connected, published, no PUBACK: publish again (a new mid)
RETRY_FAILED_S = 30.0  # the broker refused a publish (PUBACK failure): try again later


class FederationSync(BackgroundLoop):
    name = "federation-sync"
    idle_wait_s = 0.25

    def __init__(self, settings: AgentSettings):
        super().__init__()
        self.settings = settings
        f = settings.federation
        self.site, self.federation, self.cloud_key = f.site, f.name, f.cloud_key
        self.topics = Topics(self.federation)
        self.service = None
        self.link: MqttLink | None = None
        self._in_flight: dict[int, tuple[int, float]] = {}  # outbox id -> (mid, published at)
        self._mid_rows: dict[int, int] = {}  # mid -> outbox id
        self._retry_at: dict[int, float] = {}
        self._next_heartbeat = 0.0

    # ------------------------------------------------------------------ component
    def start(self, service) -> None:  # type: ignore[override]
        self.service = service
        self.db = service.db
        self.db.ensure(LABELS_SCHEMA)
        self.received = ReceivedMessages(self.db)
        self.outbox = Outbox(self.db)
        self.model_events = ModelEvents(self.db)
        self.data_root = service.data_dir.root
        remember_names(self.db, self.site, self.federation)
        PrivacyLedger(self.db).remember(self.settings.privacy)
        self.identity = site_identity(self.data_root, self.site)
        self.installer = ModelInstaller(service, self.settings, self.model_events)
        training_log = TrainingLog(self.db)
        ledger = PrivacyLedger(self.db)
        planner = RoundPlanner(
            self.settings.training,
            self.settings.privacy,
            self.received,
            self.outbox,
            ledger,
            lambda model: count_labelled(self.data_root, model.backbone_sha256),
        )
        self.schedule = TrainingSchedule(
            self.settings.training,
            (self.site, self.federation),
            self.db,
            planner,
            TrainingRunner(self.settings.training, self.settings.logging, self.data_root),
            UpdateRelease(
                self.db, self.identity, self.settings.privacy, self.outbox, ledger, training_log
            ),
            training_log,
        )
        will = build_offline_will(self.identity, self.federation, service.engine.current.version)
        self.link = MqttLink(
            f"ftl-agent-{self.federation}-{self.site}",
            self.settings.federation.broker,
            self.settings.mqtt,
            [self.topics.rounds_current, self.topics.all_models],
            will=(self.topics.twin_state(self.site), will),
        )
        self._set_connected(False)
        self.link.start()
        super().start()
        log_event(log, "federation_sync_started", site=self.site, federation=self.federation)

    def stop(self) -> None:  # type: ignore[override]
        super().stop()
        self.schedule.stop()
        if self.link is not None:
            self.link.stop()
        self._set_connected(False)

    def publish_retained(self, topic: str, payload: bytes):
        """For the twin: a retained QoS 1 publish on this connection (None when offline)."""
        if self.link is None or not self.link.connected:
            return None
        return self.link.publish(topic, payload, retain=True)

    @property
    def training_active(self) -> bool:
        return self.schedule.active

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    # ------------------------------------------------------------------ the loop
    def run_once(self) -> bool:
        worked = self._drain_inbox()
        worked |= self._drain_acks()
        worked |= self._publish_outbox()
        worked |= self.schedule.tick()
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_S
            self._set_connected(self.connected)
        return worked

    def _drain_inbox(self) -> bool:
        worked = False
        while True:
            try:
                kind, item = self.link.inbox.get_nowait()
            except queue.Empty:
                return worked
            worked = True
            if kind == "connected":
                self._set_connected(True)
            elif kind == "disconnected":
                self._set_connected(False)
            elif kind == "message":
                topic, payload, _retained = item
                try:
                    self._on_message(topic, payload)
                except Exception:
                    log.exception("handling %s failed", topic)

    def _on_message(self, topic: str, payload: bytes) -> None:
        ref = parse_topic(topic)
        if ref.kind == "round":
            self._on_round(payload)
        elif ref.kind == "model" and payload:  # empty retained payload: a dissolved cluster
            self._on_model(ref.subject, payload)

    def _on_round(self, payload: bytes) -> None:
        try:
            announcement = open_round(payload, self.cloud_key, self.federation)
        except ProtocolError as exc:
            self._bump("sync.rounds_refused")
            log_event(log, "round_refused", logging.WARNING, reason=exc.reason, detail=str(exc))
            return
        known = self.received.load_round()
        if known is not None and announcement.round < known.round:
            return  # an older announcement replayed: keep the newer one
        self.received.save_round(payload, announcement)
        log_event(
            log,
            "round_announced",
            round=announcement.round,
            status=announcement.status,
            cluster=announcement.cluster_for(self.site),
            base_version=announcement.base_version_for(self.site),
        )
        self.schedule.replan_now()
        # A new round may put this site in another cluster: its model may already be here.
        model = self.received.load_model(announcement.cluster_for(self.site))
        if model is not None:
            self._install(model)

    def _on_model(self, cluster: str, payload: bytes) -> None:
        current = self.service.engine.current
        try:
            model = open_global_model(
                payload,
                self.cloud_key,
                self.federation,
                backbone_sha256=current.backbone_sha256,
                labels=current.labels,
            )
        except ProtocolError as exc:
            self.model_events.record(cluster, None, "refused", f"{exc.reason}: {exc}")
            log_event(
                log,
                "model_refused",
                logging.WARNING,
                cluster=cluster,
                reason=exc.reason,
                detail=str(exc),
            )
            return
        if model.cluster != cluster:
            self.model_events.record(cluster, model.version, "refused", "wrong_cluster")
            return
        self.received.save_model(payload, model)
        self.schedule.replan_now()
        announcement = self.received.load_round()
        mine = announcement.cluster_for(self.site) if announcement else "global"
        if cluster == mine:
            self._install(model)

    def _install(self, model) -> None:
        try:
            outcome = self.installer.consider(model)
        except Exception as exc:  # a head that does not load: the old model stays in use
            self.model_events.record(model.cluster, model.version, "refused", str(exc))
            log_event(
                log, "model_install_failed", logging.ERROR, version=model.version, error=str(exc)
            )
            return
        if outcome == "installed":
            log_event(log, "model_installed", version=model.version, round=model.round)

    # ------------------------------------------------------------------ outbox
    def _publish_outbox(self) -> bool:
        if not self.connected:
            return False
        worked = False
        now = time.monotonic()
        for entry in self.outbox.entries():
            row_id = entry.id
            sent = self._in_flight.get(row_id)
            if sent is not None and now - sent[1] < RESEND_AFTER_S:
                continue
            if self._retry_at.get(row_id, 0.0) > now:
                continue
            info = self.link.publish(entry.topic, entry.payload)
            self._in_flight[row_id] = (info.mid, now)
            self._mid_rows[info.mid] = row_id
            worked = True
            log_event(log, "update_published", update_id=entry.update_id, mid=info.mid)
        return worked

    def _drain_acks(self) -> bool:
        worked = False
        while True:
            try:
                mid, failed, reason = self.link.acks.get_nowait()
            except queue.Empty:
                return worked
            row_id = self._mid_rows.pop(mid, None)
            if row_id is None:
                continue  # a twin publish, or an earlier copy of a resent update
            worked = True
            self._in_flight.pop(row_id, None)
            if failed:
                self.outbox.publish_failed(row_id, reason)
                self._retry_at[row_id] = time.monotonic() + RETRY_FAILED_S
                log_event(log, "update_refused_by_broker", logging.WARNING, reason=reason)
                continue
            update_id = self.outbox.acknowledged(row_id)
            if update_id:
                log_event(log, "update_acknowledged", update_id=update_id)

    # ------------------------------------------------------------------ status
    def _set_connected(self, connected: bool) -> None:
        self.db.set_meta_many(
            {"sync.connected": "1" if connected else "0", "sync.heartbeat_at": repr(time.time())}
        )

    def _bump(self, key: str) -> None:
        self.db.set_meta(key, str(int(self.db.get_meta(key) or 0) + 1))
