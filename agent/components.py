"""The optional components of ``ftl-agent serve``, built from the pipeline's parts.

With ``--broker``: the federation sync (``sync.federation_sync``: inbox,
outbox sender, training schedule, heartbeat over one MQTT link) and the
scanner's twin, which publishes over the same link. This is the one place that
knows every part; each part is handed what it uses.
"""

from __future__ import annotations

import time

from ftlct.agent.labels.label_store import LabelStore
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.service import AgentService, Component
from ftlct.agent.settings import AgentSettings
from ftlct.agent.sync.federation_sync import FederationSync
from ftlct.agent.sync.heartbeat import Heartbeat
from ftlct.agent.sync.inbox import Inbox
from ftlct.agent.sync.local_rounds import TrainingSchedule, agent_planner
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.sync.model_install import ModelInstaller
from ftlct.agent.sync.model_pin import ModelPin
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.outbox_sender import OutboxSender
from ftlct.agent.sync.receipts import Receipts
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.site_identity import remember_names, site_identity
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.sync.update_release import UpdateRelease
from ftlct.agent.training.runner import TrainingRunner
from ftlct.agent.twin.feature_stats import recent_feature_stats
from ftlct.agent.twin.twin_builder import build_twin_state
from ftlct.agent.twin.twin_publisher import TwinPublisher
from ftlct.protocol.exchange import build_offline_will
from ftlct.protocol.identity import Identity
from ftlct.protocol.topics import Topics


def optional_components(settings: AgentSettings, service: AgentService) -> list[Component]:
    """What the settings ask for beyond the pipeline (nothing without ``--broker``)."""
    if not settings.federation.broker:
        return []
    identity = site_identity(service.data_dir.root, settings.federation.site)
    sync = federation_sync(settings, service, identity)
    components: list[Component] = [sync]
    if settings.twin.enabled:
        components.append(twin_publisher(settings, service, sync, identity))
    return components


def federation_sync(
    settings: AgentSettings, service: AgentService, identity: Identity
) -> FederationSync:
    f = settings.federation
    site, federation, db, root = f.site, f.name, service.db, service.data_dir.root
    topics = Topics(federation)
    engine = service.engine
    remember_names(db, site, federation)
    received, outbox, ledger = ReceivedMessages(db), Outbox(db), PrivacyLedger(db)
    model_events, training_log = ModelEvents(db), TrainingLog(db)
    LabelStore(db)  # the table a label import writes; status counts it from then on
    ledger.remember(settings.privacy)
    link = MqttLink(
        f"ftl-agent-{federation}-{site}",
        f.broker,
        settings.mqtt,
        topics.site_subscriptions(site)
        + ([topics.all_best_models] if settings.training.serve == "best" else []),
        will=(
            topics.twin_state(site),
            build_offline_will(identity, federation, engine.current.version),
        ),
    )
    planner = agent_planner(settings, root, received, outbox, ledger)
    schedule = TrainingSchedule(
        settings.training,
        (site, federation),
        db,
        planner,
        TrainingRunner(settings.training, settings.logging, root),
        UpdateRelease(db, identity, settings.privacy, outbox, ledger, training_log),
        training_log,
    )
    installer = ModelInstaller(engine, db, root, settings.training, model_events)

    def pin() -> ModelPin:
        current = engine.current
        return ModelPin("head", current.labels, backbone_sha256=current.backbone_sha256)

    inbox = Inbox(
        site,
        federation,
        f.cloud_key,
        db,
        received,
        model_events,
        pin,
        Receipts(site, federation, f.cloud_key, db, outbox),
        changed=schedule.replan_now,
        model_for_me=installer.offer,
        serve=settings.training.serve,
    )
    sender = OutboxSender(outbox, link, f)
    return FederationSync(link, inbox, sender, schedule, Heartbeat(db))


def twin_publisher(
    settings: AgentSettings, service: AgentService, sync: FederationSync, identity: Identity
) -> TwinPublisher:
    f = settings.federation
    started_at = time.time()

    def state():
        current = service.engine.current
        return build_twin_state(
            service.db,
            service.status(),
            current.version,
            sync.training_active,
            started_at,
            recent_feature_stats(service.embeddings, current.model, settings.twin),
        )

    return TwinPublisher(
        settings.twin,
        sync.link,
        identity,
        f.name,
        Topics(f.name).twin_state(f.site),
        service.events,
        state,
        lambda: service.engine.current.version,
    )
