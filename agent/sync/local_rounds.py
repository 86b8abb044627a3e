"""When and how this site takes part in a round: plan once, train, release.

* ``TrainingSchedule`` (serve): every ``training.check_interval_s``, or at once
  when a round or model arrives, the round is planned; a plan that can train is
  handed to the training child process (``training.runner``), and what comes back
  is released (``sync.update_release``) into the outbox;
* ``run_local_round`` (``ftl-agent train``): the same plan, trained in process,
  released the same way, from the last announcement received (works offline).

What a round came to is logged and, unless trained (the release logs that in
its own transaction), written to the training log.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ftlct.agent.logs import log_event
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import AgentSettings, TrainingSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.layout import DataDir
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.sync.round_plan import RoundOutcome, RoundPlan, RoundPlanner, skipped
from ftlct.agent.sync.site_identity import federation_names, site_identity
from ftlct.agent.sync.training_log import TrainingLog
from ftlct.agent.sync.update_release import UpdateRelease
from ftlct.agent.training.labelled_data import count_labelled
from ftlct.agent.training.local_round import LocalRoundResult, NoResult, train_from_data_dir
from ftlct.agent.training.runner import TIMED_OUT, TrainingRunner

log = logging.getLogger(__name__)

LAST_SKIP_META = "training.last_skip"  # why the open round is not trained yet (status shows it)
REFUSED_META = "training.rounds_refused"  # rounds whose recipe was out of bounds (status)
LAST_REFUSED_META = "training.last_refused_round"
FAILED_BACKOFF_S = 60.0  # do not spin on a failing round


def finish(
    plan: RoundPlan, result: LocalRoundResult | NoResult, release: UpdateRelease, log_: TrainingLog
) -> RoundOutcome:
    """Release a trained delta, or record why there is none."""
    if isinstance(result, LocalRoundResult):
        outcome = release.release(plan, result)
    else:
        outcome = RoundOutcome(result.outcome, result.reason, plan.round)
    if not outcome.trained:
        log_.record(outcome.round, outcome.outcome, outcome.reason, outcome.metrics)
    return outcome


class TrainingSchedule:
    def __init__(
        self,
        settings: TrainingSettings,
        names: tuple[str, str],
        db: Database,
        planner: RoundPlanner,
        runner: TrainingRunner,
        release: UpdateRelease,
        training_log: TrainingLog,
        clock=time.monotonic,
    ):
        self.settings = settings
        self.site, self.federation = names
        self.db = db
        self.planner = planner
        self.runner = runner
        self.release = release
        self.training_log = training_log
        self.clock = clock
        self._plan: RoundPlan | None = None  # the plan the child is training
        self._next_plan = 0.0
        self._last_skip = ""
        self._given_up: int | None = None  # a round whose training was killed: not again

    @property
    def active(self) -> bool:
        return self._plan is not None

    def replan_now(self) -> None:
        """Something changed (a round, a model): plan again on the next tick."""
        self._next_plan = 0.0

    def tick(self) -> bool:
        """Collect a finished child's result, or start one if the round can train now."""
        result = self.runner.poll()
        if result is not None:
            plan, self._plan = self._plan, None
            self._next_plan = 0.0
            self._done(finish(plan, result, self.release, self.training_log))
            return True
        if self.runner.running or not self.settings.auto:
            return False
        now = self.clock()
        if now < self._next_plan:
            return False
        self._next_plan = now + self.settings.check_interval_s
        plan = self.planner.plan(self.site, self.federation)
        if isinstance(plan, RoundOutcome):
            if plan.outcome == "refused":
                self._refused(plan)
            self._skipped(plan.reason)
            return False
        if plan.round == self._given_up:
            self._skipped(f"round {plan.round}'s training ran out of time; waiting for the next")
            return False
        self._start(plan)
        return True

    def stop(self) -> None:
        self.runner.stop()
        self._plan = None

    def _start(self, plan: RoundPlan) -> None:
        log_event(
            log,
            "training_started",
            round=plan.round,
            cluster=plan.cluster,
            labelled_slices=plan.n_labelled,
        )
        self._plan = plan
        self.db.set_meta(LAST_SKIP_META, "")
        self._last_skip = ""
        self.runner.start(plan.training)

    def _done(self, outcome: RoundOutcome) -> None:
        level = logging.INFO if outcome.outcome != "failed" else logging.ERROR
        log_event(
            log,
            "training_" + outcome.outcome,
            level,
            round=outcome.round,
            reason=outcome.reason or None,
            update_id=outcome.update_id,
        )
        if outcome.outcome == "failed":
            self._next_plan = self.clock() + FAILED_BACKOFF_S
            if outcome.reason.startswith(TIMED_OUT):
                self._given_up = outcome.round
        elif outcome.outcome == "skipped":
            self._skipped(outcome.reason)

    def _refused(self, outcome: RoundOutcome) -> None:
        """Count a round refused for its recipe once, however often it is planned again."""
        if self.db.get_meta(LAST_REFUSED_META) == str(outcome.round):
            return
        self.db.set_meta_many(
            {
                REFUSED_META: str(rounds_refused_for_recipe(self.db) + 1),
                LAST_REFUSED_META: str(outcome.round),
            }
        )
        self.training_log.record(outcome.round, "refused", outcome.reason, {})
        log_event(
            log, "round_recipe_refused", logging.WARNING, round=outcome.round, reason=outcome.reason
        )

    def _skipped(self, reason: str) -> None:
        if reason != self._last_skip:
            self._last_skip = reason
            self.db.set_meta(LAST_SKIP_META, reason)
            log_event(log, "training_skipped", reason=reason)


def agent_planner(
    settings: AgentSettings,
    data_root: Path,
    received: ReceivedMessages,
    outbox: Outbox,
    ledger: PrivacyLedger,
) -> RoundPlanner:
    """The agent's planner: its samples are the labelled slice embeddings of the base
    model's backbone (the bench's sites count their images instead)."""
    return RoundPlanner(
        settings.training,
        settings.privacy,
        received,
        outbox,
        ledger,
        lambda model: count_labelled(data_root, model.backbone_sha256),
    )


def rounds_refused_for_recipe(db: Database) -> int:
    """Rounds this site refused because their recipe was outside its bounds."""
    return int(db.get_meta(REFUSED_META) or 0)


def waiting_for(db: Database) -> str | None:
    """Why serve's open round is not trained yet (None: nothing recorded)."""
    return db.get_meta(LAST_SKIP_META) or None


def run_local_round(settings: AgentSettings, data_root: Path) -> RoundOutcome:
    """``ftl-agent train``: plan, train in this process and release one update."""
    layout = DataDir(Path(data_root))
    if not layout.index.is_file():
        return skipped(f"no agent data in {layout.root} (run `ftl-agent serve` there first)")
    db = Database(layout.index, create=False)
    try:
        received, outbox, ledger = ReceivedMessages(db), Outbox(db), PrivacyLedger(db)
        training_log = TrainingLog(db)
        ledger.remember(settings.privacy)
        planner = agent_planner(settings, layout.root, received, outbox, ledger)
        site, federation = federation_names(settings, db)
        plan = planner.plan(site, federation)
        if isinstance(plan, RoundOutcome):
            training_log.record(plan.round, plan.outcome, plan.reason, plan.metrics)
            return plan
        result = train_from_data_dir(plan.training, settings.training, layout.root)
        release = UpdateRelease(
            db,
            site_identity(layout.root, plan.site),
            settings.privacy,
            outbox,
            ledger,
            training_log,
        )
        return finish(plan, result, release, training_log)
    finally:
        db.close()
