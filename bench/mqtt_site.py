"""One simulated site on MQTT, running the agent's own federation code with the bench as data source.

A site here is ``ftl-agent serve``'s federation part: the agent's
``FederationSync`` loop over an ``MqttLink`` (messages verified on the loop's
thread by the agent's ``Inbox`` against a ``ModelPin``, kept in a per-site
index), its ``RoundPlanner`` (a site is ready for round r when the agent would
train it: the round is open, this site has not sent its update, its base model
has arrived) and its ``UpdateRelease`` and ``OutboxSender`` (the delta sealed,
signed, queued and published QoS 1, resent until the cloud's signed receipt
removes it from the outbox). What differs from an agent is the data source only: the
bench's learner trains (in the round loop, timed) instead of a child process
on kept embeddings, as Flower's simulation runs the same ClientApp over another
Grid. A change to the agent's wire behaviour is therefore exercised here too.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import FederationSettings, PrivacySettings, TrainingSettings
from ftlct.agent.store.database import Database
from ftlct.agent.sync.federation_sync import FederationSync
from ftlct.agent.sync.inbox import Inbox
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.sync.model_pin import ModelPin
from ftlct.agent.sync.mqtt_link import MqttLink
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.outbox_sender import OutboxSender
from ftlct.agent.sync.receipts import Receipts
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.round_plan import RoundOutcome, RoundPlan, RoundPlanner
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.sync.update_release import UpdateRelease
from ftlct.agent.training.local_round import LocalRoundResult
from ftlct.cloud.strategies import SiteUpdate
from ftlct.protocol.identity import Identity
from ftlct.protocol.messages import GlobalModel
from ftlct.protocol.mqtt_connection import MqttSettings
from ftlct.protocol.topics import Topics

WAIT_S = 0.5  # the longest the round loop sleeps between checks (the inbox wakes it sooner)
ACK_POLL_S = 0.02
PUBACK_TIMEOUT_S = 60.0


class TransportError(RuntimeError):
    """The broker or the cloud did not do its part in time."""


class SimulatedSite:
    """One site: the agent's sync loop on its own MQTT connection and index."""

    def __init__(
        self,
        site: str,
        identity: Identity,
        broker_url: str,
        federation: str,
        cloud_key: str,
        pin: ModelPin,
        n_samples: int,
        work: Path,
    ) -> None:
        self.site = site
        self.federation = federation
        work.mkdir(parents=True, exist_ok=True)
        self.db = Database(work / "index.sqlite")
        received, self.outbox = ReceivedMessages(self.db), Outbox(self.db)
        ledger, training_log = PrivacyLedger(self.db), TrainingLog(self.db)
        self.model_events = ModelEvents(self.db)
        no_privacy = PrivacySettings()
        # The bench's sites all take part in every round (the cloud waits for all of them).
        self.planner = RoundPlanner(
            TrainingSettings(min_samples=1),
            no_privacy,
            received,
            self.outbox,
            ledger,
            lambda model: n_samples,
        )
        self.release = UpdateRelease(
            self.db, identity, no_privacy, self.outbox, ledger, training_log
        )
        topics = Topics(federation)
        self.link = MqttLink(
            f"bench-{federation}-{site}",
            broker_url,
            MqttSettings(),
            topics.site_subscriptions(site),
        )
        self._changed = threading.Condition()
        inbox = Inbox(
            site,
            federation,
            cloud_key,
            self.db,
            received,
            self.model_events,
            lambda: pin,
            Receipts(site, federation, cloud_key, self.db, self.outbox),
            changed=self._notify,
        )
        sender = OutboxSender(self.outbox, self.link, FederationSettings())
        self.sync = FederationSync(self.link, inbox, sender)
        self._plan: RoundPlan | None = None
        self._current: tuple[str, GlobalModel] | None = None
        self.sync.start()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ rounds
    def _ready(self, round_: int, finished_ok: bool) -> tuple[bool, str]:
        """Whether this site can train ``round_`` (or, ``finished_ok``, the run is over and
        the final model is here); else why not."""
        plan = self.planner.plan(self.site, self.federation)
        if isinstance(plan, RoundPlan):
            if plan.round == round_:
                self._plan, self._current = plan, (plan.cluster, plan.model)
                return True, ""
            return False, f"the cloud opened round {plan.round}, not {round_}"
        current = self.planner.current_model(self.site)
        if finished_ok and current is not None:
            announcement, cluster, model = current
            if announcement.status == "finished" and announcement.round >= round_ - 1:
                self._plan, self._current = None, (cluster, model)
                return True, ""
        return False, plan.reason

    def wait(self, round_: int, finished_ok: bool, timeout: float, problem=lambda: None) -> None:
        """Block until ``_ready``; ``problem()`` returning a reason (the cloud died) ends it early."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                ready, why = self._ready(round_, finished_ok)
                if ready:
                    return
                reason = problem()
                if reason:
                    raise TransportError(reason)
                left = deadline - time.monotonic()
                if left <= 0:
                    refused = self.model_events.last()
                    detail = f"; last model event: {refused}" if refused else ""
                    raise TransportError(
                        f"{self.site}: no round {round_} and its model from the cloud after "
                        f"{timeout:.0f} s ({why}{detail})"
                    )
                self._changed.wait(min(left, WAIT_S))

    def current(self) -> tuple[str, GlobalModel]:
        """This site's cluster and the global model it trains from (or ended with)."""
        assert self._current is not None, "wait() first"
        return self._current

    def announced(self) -> dict:
        """The training config of the round this site is to train (``wait`` first)."""
        return dict(self._plan.announcement.training) if self._plan is not None else {}

    def publish_update(self, round_: int, update: SiteUpdate, metrics: dict) -> None:
        """Release the round's delta as the agent does; returns once the broker has it
        (the outbox keeps resending it until the cloud's receipt; the run waits for the
        cloud's round)."""
        plan = self._plan
        if plan is None or plan.round != round_:
            raise TransportError(f"{self.site}: round {round_} was not planned")
        outcome: RoundOutcome = self.release.release(
            plan, LocalRoundResult(update.delta, update.n_samples, metrics)
        )
        if not outcome.trained:
            raise TransportError(f"{self.site}: update not queued: {outcome.reason}")
        self._plan = None
        self.sync.wake()
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        while not self.outbox.at_broker(outcome.update_id):
            if time.monotonic() > deadline:
                raise TransportError(f"{self.site}: the broker did not acknowledge its update")
            time.sleep(ACK_POLL_S)

    def close(self) -> None:
        self.sync.stop()
        self.db.close()
