"""Whether this site can take part in the open round now, and on what: made once per round.

    RoundPlanner(...).plan(site, federation) -> RoundPlan | RoundOutcome("skipped", reason)

Cheap and torch-free (serve re-plans every ``training.check_interval_s``, so
labels imported while a round is open count). A round is skipped, with the
reason, when: no site/federation is known; no round was announced or it is
finished; this site already made its update for the round; the round's base
global model has not arrived; there are fewer labelled samples than
``training.min_samples``; or the privacy budget would be exceeded. A round whose
recipe is outside this site's bounds is ``refused`` (``training.recipe``). The plan is
what training trains from (``plan.training``) and what the release seals
(``sync.update_release``): nothing plans the round again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ftlct.agent.privacy import mechanism as privacy
from ftlct.agent.privacy.ledger import PrivacyLedger
from ftlct.agent.settings import PrivacySettings, TrainingSettings
from ftlct.agent.sync.outbox import Outbox
from ftlct.agent.sync.received_messages import ReceivedMessages
from ftlct.agent.training.local_round import TrainingPlan
from ftlct.agent.training.recipe import Recipe, RecipeRefused, recipe_for
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement

# How many samples the site has for a base model (the agent: labelled slice embeddings).
CountSamples = Callable[[GlobalModel], int]


@dataclass
class RoundOutcome:
    """What came of one round at this site (``ftl-agent train --json`` prints it)."""

    outcome: str  # trained, skipped, refused (the round's recipe), failed
    reason: str = ""
    round: int | None = None
    update_id: str | None = None
    n_samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.outcome == "trained"

    def to_json(self) -> dict:
        return asdict(self)


def skipped(reason: str, round_no: int | None = None) -> RoundOutcome:
    return RoundOutcome("skipped", reason, round_no)


@dataclass(frozen=True)
class RoundPlan:
    site: str
    federation: str
    announcement: RoundAnnouncement
    cluster: str
    training: TrainingPlan  # what training gets: round, base model, recipe
    n_labelled: int
    rho: float  # privacy cost of this round's release (0 without DP)

    @property
    def round(self) -> int:
        return self.announcement.round

    @property
    def model(self) -> GlobalModel:
        return self.training.model

    @property
    def recipe(self) -> Recipe:
        return self.training.recipe


class RoundPlanner:
    def __init__(
        self,
        training: TrainingSettings,
        privacy_settings: PrivacySettings,
        received: ReceivedMessages,
        outbox: Outbox,
        ledger: PrivacyLedger,
        count_samples: CountSamples,
    ):
        self.training = training
        self.privacy = privacy_settings
        self.received = received
        self.outbox = outbox
        self.ledger = ledger
        self.count_samples = count_samples

    def current_model(self, site: str) -> tuple[RoundAnnouncement, str, GlobalModel] | None:
        """The last announcement, this site's cluster in it and the global model it points
        the site at, once that model has arrived; None before."""
        announcement = self.received.load_round()
        if announcement is None:
            return None
        cluster = announcement.cluster_for(site)
        model = self.received.load_model(cluster)
        if model is None or model.version != announcement.base_version_for(site):
            return None
        return announcement, cluster, model

    def plan(self, site: str | None, federation: str | None) -> RoundPlan | RoundOutcome:
        if not site or not federation:
            return skipped(
                "no site/federation configured (serve with --site and --federation once)"
            )
        announcement = self.received.load_round()
        if announcement is None:
            return skipped("no round announced yet (the agent has not reached the broker)")
        number = announcement.round
        if announcement.status != "open":
            return skipped(f"round {number} is finished; waiting for the next round", number)
        cluster = announcement.cluster_for(site)
        base = announcement.base_version_for(site)
        if self.outbox.made_for(number, cluster):
            return skipped(f"already made this site's update for round {number}", number)
        model = self.received.load_model(cluster)
        if model is None or model.version != base:
            have = model.version if model else "none"
            return skipped(
                f"round {number} trains from {base}; global model received: {have}", number
            )
        n_labelled = self.count_samples(model)
        needed = self.training.min_samples
        if n_labelled < needed:
            return skipped(
                f"{n_labelled} labelled slices, training needs at least {needed} "
                "(ftl-agent label import / label set)",
                number,
            )
        p = self.privacy
        rho = privacy.rho_per_release(p.noise_multiplier) if p.enabled else 0.0
        if p.enabled:
            budget = privacy.Budget(self.ledger.rho_spent(), p.delta, p.epsilon_limit)
            if not budget.allows(rho):
                return skipped(
                    f"privacy budget exhausted: epsilon {budget.epsilon_spent:.3f} spent, one "
                    f"more round would reach {budget.epsilon_after(rho):.3f} > limit "
                    f"{p.epsilon_limit:g}",
                    number,
                )
        try:
            recipe = recipe_for(self.training, announcement.training)
        except RecipeRefused as exc:
            return RoundOutcome("refused", f"round {number}'s recipe is refused: {exc}", number)
        if recipe.update_kind in ("statistics", "moments") and p.enabled:
            # per-slice DP on the statistics: the clip is the sensitivity's C
            bound = recipe.embedding_clip or p.statistics_clip_norm
            clip = min(p.statistics_clip_norm, bound)
            recipe = dataclasses.replace(recipe, embedding_clip=clip)
        return RoundPlan(
            site,
            federation,
            announcement,
            cluster,
            TrainingPlan(number, model, recipe),
            n_labelled,
            rho,
        )
