"""The round state machine: open a round, collect updates, aggregate, publish, open the next.

No sockets here: messages come in through ``on_message`` and go out through
the ``publish(topic, payload, retain)`` callable the server passes in, so the
whole machine runs in tests without a broker. Every state change is
committed to the ``StateStore`` before anything is published.

Each aggregation also judges the version the round started from by the
sites' validation reports (``cloud.best_versions``): the best version of each
cluster is announced with the round and retained on ``best/{cluster}``.

Closing rule: a round closes when it has ``min_sites`` accepted updates and
either its deadline has passed or every enrolled site has answered. At the
deadline with fewer than ``min_sites`` updates, the round is NOT aggregated
on a thin quorum: its deadline moves ``round_timeout`` into the future, the
retained ``rounds/current`` is re-published with ``extensions`` + 1 (so late
or reconnecting sites see it), and a warning is logged. Updates already
accepted stay counted.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Callable

from ftlct.cloud.best_versions import BestVersions
from ftlct.cloud.current_models import CurrentModels
from ftlct.cloud.initial_model import HEAD, NETWORK, InitialModel, federation_kind, head_of
from ftlct.cloud.internal_errors import InternalErrors
from ftlct.cloud.log_limiter import LogLimiter
from ftlct.cloud.settings import CloudSettings
from ftlct.cloud.site_weights import bounded_weights
from ftlct.cloud.state import RoundRow, StateStore
from ftlct.cloud.state.inbox import JUDGED_KEY, InboxMessage
from ftlct.cloud.state.models import weights_to_blob
from ftlct.cloud.strategies import FederationState, Strategy
from ftlct.cloud.strategies.base import DEFAULT_CLUSTER, default_cluster
from ftlct.cloud.twin_registry import TwinRegistry
from ftlct.cloud.update_intake import UpdateIntake
from ftlct.export.model_dir import ModelDir
from ftlct.export.tensors import Weights
from ftlct.protocol.errors import ProtocolError, is_exit
from ftlct.protocol.exchange import build_global_model, build_receipt, build_round
from ftlct.protocol.identity import Identity
from ftlct.protocol.messages import GlobalModel, RoundAnnouncement
from ftlct.protocol.receipt import Receipt
from ftlct.protocol.topics import Topics, parse_topic

log = logging.getLogger("ftlct.cloud.rounds")

Publish = Callable[[str, bytes, bool], None]
PIN_KEY = {HEAD: "backbone_sha256", NETWORK: "architecture_sha256"}  # meta key of each kind's pin


class CloudStateError(RuntimeError):
    """The state directory cannot be used with these settings (other federation, other backbone)."""


class RoundCoordinator:
    def __init__(
        self,
        settings: CloudSettings,
        store: StateStore,
        strategy: Strategy,
        identity: Identity,
        publish: Publish,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.store = store
        self.strategy = strategy
        self.identity = identity
        self.publish = publish
        self.clock = clock
        self.topics = Topics(settings.federation)
        self.limiter = LogLimiter(log)
        self.twins = TwinRegistry(store, settings.federation, self.limiter)
        self.updates = UpdateIntake(settings, store, strategy, self.limiter)
        self.best = BestVersions(store.meta)
        self.current: CurrentModels | None = None  # set by initialise()
        self.errors = InternalErrors(store, self.limiter, settings.limits.rejections_kept)
        self._outgoing: list[tuple[str, bytes, bool]] = []  # published after the commit
        # (round, updates stored for it): counted as they commit, so a tick need not count the
        # round's rows (O(sites), once per judged slice); read from the store for a new round
        self._received: tuple[int, int] | None = None

    # ------------------------------------------------------------------ lifecycle
    def initialise(self, model: InitialModel | ModelDir | None) -> None:
        """First start: ``model``'s weights become global version 1. Later: check and resume.

        ``model`` is a head (a model directory) or a whole network (see
        ``initial_model``); what the federation federates is pinned at creation.
        """
        initial = head_of(model) if isinstance(model, ModelDir) else model
        federation = self.store.meta.get("federation")
        if federation is not None and federation != self.settings.federation:
            raise CloudStateError(
                f"{self.store.path} belongs to federation {federation!r}, not {self.settings.federation!r}"
            )
        current = CurrentModels.load(self.store.models)
        if current is None:
            if initial is None:
                raise CloudStateError(
                    "a new federation needs --model (a head over a backbone) "
                    "or --initial-weights (a whole network)"
                )
            self._check_strategy_accepts(initial.weights, initial.source)
            with self.store.transaction():
                self.store.meta.set("federation", self.settings.federation)
                self.store.meta.set("kind", initial.kind)
                self.store.meta.set(PIN_KEY[initial.kind], initial.pin)
                self.store.meta.set("labels", ",".join(initial.labels))
                self.store.models.add(DEFAULT_CLUSTER, initial.version, 0, None, initial.weights)
                self.store.models.save_federation(0, {DEFAULT_CLUSTER: initial.version}, {}, {})
            current = CurrentModels.load(self.store.models)
            log.info(
                "new %s federation %s from %s (version %s)",
                initial.kind,
                self.settings.federation,
                initial.source,
                initial.version,
            )
        else:
            if initial is not None:
                self._check_same_pin(initial)
            some_model = next(iter(current.state.models.values()))
            self._check_strategy_accepts(some_model, f"the federation in {self.store.path}")
        self.current = current
        self._open_next_round_if_due()

    @property
    def kind(self) -> str:
        """What this federation federates: ``head`` or ``network``."""
        return federation_kind(self.store)

    def _check_same_pin(self, initial: InitialModel) -> None:
        if initial.kind != self.kind:
            raise CloudStateError(
                f"{self.store.path} federates a {self.kind}, {initial.source} is a {initial.kind}"
            )
        if initial.pin != self.store.meta.get(PIN_KEY[initial.kind]):
            what = "backbone" if initial.kind == HEAD else "tensor layout"
            raise CloudStateError(
                f"{initial.source} has another {what} than the federation in {self.store.path}"
            )

    def _check_strategy_accepts(self, weights: Weights, source: str) -> None:
        """Refuse to start when the strategy would refuse these tensors at every aggregation.

        The strategy is the authority on what it federates (``ftl``: head
        tensors only), so it is asked with one probe update (``Strategy.start_probe``).
        """
        try:
            probe = self.strategy.start_probe(weights)
            self.strategy.aggregate(FederationState({DEFAULT_CLUSTER: weights}), [probe])
        except ValueError as exc:
            raise CloudStateError(
                f"--strategy {self.settings.strategy} cannot federate {source}: {exc}"
            ) from exc

    @property
    def finished(self) -> bool:
        limit = self.settings.rounds
        return limit > 0 and self.store.rounds.completed() >= limit

    def publish_all(self) -> None:
        """(Re-)publish the retained state: every current global model and the round."""
        for cluster in self.current.versions:
            self._publish_model(cluster)
        for cluster in self.best.notes():
            self._publish_best(cluster)
        self._publish_round()

    # ------------------------------------------------------------------ inputs
    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> str:
        """Handle one MQTT message; returns what became of it (for logs and tests)."""
        return self.on_inbox([InboxMessage(0, topic, payload, retained)])[0]

    @property
    def inbox_judged(self) -> int:
        """The id of the last inbox message judged (committed with its decision)."""
        return int(self.store.meta.get(JUDGED_KEY) or 0)

    def on_inbox(self, messages: list[InboxMessage]) -> list[str]:
        """Judge messages in one commit that also records the last inbox id judged; their outcomes.

        Nothing a message holds ends the process: an unexpected exception
        rolls back what that message changed and is counted as ``internal``.
        Receipts and other publishes go out after the commit. A failing commit
        (a full disk) raises: the messages stay in the inbox for the next try.
        """
        outcomes = []
        try:
            with self.store.transaction():
                # what is the same for the whole batch is read once: the round (only tick()
                # changes it, after this commit) and the message counts (one write per kind)
                current = self.store.rounds.last()
                counted: collections.Counter[str] = collections.Counter()
                for message in messages:
                    outcome, kind = self._contained(message, current)
                    outcomes.append(outcome)
                    if kind is not None:
                        counted[kind] += 1
                for kind, n in counted.items():
                    self.store.counters.bump(f"messages.{kind}", n)
                last = max(message.id for message in messages)
                if last > self.inbox_judged:
                    self.store.meta.set(JUDGED_KEY, str(last))
        except BaseException:
            self._outgoing.clear()
            raise
        if (
            current is not None
            and self._received is not None
            and self._received[0] == current.round
        ):
            self._received = (current.round, self._received[1] + outcomes.count("accepted"))
        self._flush()
        if "accepted" in outcomes:
            self.tick()
        return outcomes

    def _contained(self, message: InboxMessage, current: RoundRow | None) -> tuple[str, str | None]:
        """``(outcome, the messages.* kind to count)``; a failure is counted where it is
        caught, so its kind is None."""
        published = len(self._outgoing)
        try:
            with self.store.transaction():  # a savepoint: a failure undoes this message only
                outcome = self._dispatch(message.topic, message.payload, message.retained, current)
        except BaseException as exc:  # a bug, or a decoder's panic, costs one message only
            if is_exit(exc):
                raise
            del self._outgoing[published:]
            return self.errors.message_failed(message.topic, exc), None
        return outcome, outcome.partition(":")[0]

    def _dispatch(
        self, topic: str, payload: bytes, retained: bool, current: RoundRow | None
    ) -> str:
        try:
            ref = parse_topic(topic)
        except ProtocolError as exc:
            self.limiter.warning("bad_topic", "ignored message on %r: %s", topic[:200], exc)
            return "ignored"
        if ref.federation != self.settings.federation:
            return "ignored"
        if ref.kind == "update":
            if retained and payload:
                # sites never retain updates: clear it, or it comes back at every subscribe
                self._outgoing.append((topic, b"", True))
            if not payload:  # a cleared retained message
                return "ignored"
            verdict = self.updates.handle(ref.subject, payload, current, self.current)
            if verdict.message is not None:  # attributable: its site hears the verdict
                receipt = Receipt(
                    verdict.message.site,
                    verdict.message.update_id,
                    verdict.message.round,
                    verdict.outcome,
                    verdict.reason,
                )
                data = build_receipt(self.identity, self.settings.federation, receipt)
                self._outgoing.append((self.topics.receipts(receipt.site), data, False))
            return verdict.text
        if ref.kind == "twin_state":
            return self.twins.on_state(ref.subject, payload, retained)
        return "ignored"

    def _flush(self) -> None:
        """Publish what the last committed message asked for (cleared retained messages...)."""
        outgoing, self._outgoing = self._outgoing, []
        for topic, payload, retain in outgoing:
            self.publish(topic, payload, retain)

    def tick(self) -> None:
        """Close the open round if it is ready; extend its deadline if it lacks a quorum.

        A failure (a bug in a strategy, a full disk) leaves the round open and
        is logged; the next tick tries again.
        """
        try:
            self._tick()
        except Exception as exc:
            self.errors.step_failed("in the round step; the round stays open and is retried", exc)

    def _tick(self) -> None:
        row = self.store.rounds.last()
        if row is None or row.status != "open":
            return
        # counts, not sets: the cost of a tick does not grow with the number of sites
        # (accepted updates come from enrolled sites only, and no site is ever unenrolled)
        received = self._received_in(row.round)
        now = self.clock()
        quorum = received >= self.settings.min_sites
        if quorum and (now >= row.deadline or self._everyone_answered(received)):
            self._aggregate(row)
        elif now >= row.deadline:
            deadline = now + self.settings.round_timeout
            self.store.rounds.extend(row.round, deadline)
            log.warning(
                "round %d: %d of %d required updates at the deadline; extended by %.0f s",
                row.round,
                received,
                self.settings.min_sites,
                self.settings.round_timeout,
            )
            self._publish_round()

    def _received_in(self, round_no: int) -> int:
        if self._received is None or self._received[0] != round_no:
            self._received = (round_no, self.store.updates.count_of_round(round_no))
        return self._received[1]

    def _everyone_answered(self, received: int) -> bool:
        enrolled = self.store.sites.count()  # asked only once there is a quorum
        return enrolled > 0 and received >= enrolled

    # ------------------------------------------------------------------ rounds
    def _open_next_round_if_due(self) -> None:
        last = self.store.rounds.last()
        if (last is not None and last.status == "open") or self.finished:
            return
        with self.store.transaction():
            self.store.rounds.add(
                self._next_round_row(
                    last.round + 1 if last else 1, self.current.state, self.current.versions
                )
            )

    def _assignments(self, state: FederationState) -> tuple[str, dict[str, str]]:
        """``(default cluster, site -> cluster for the sites elsewhere)`` after ``state``."""
        default = default_cluster(state)
        sites = set(self.store.sites.enrolled()) | set(state.membership)
        assignments = {}
        for site in sorted(sites):
            cluster = self.strategy.cluster_of(state, site)
            if cluster != default:
                assignments[site] = cluster
        return default, assignments

    def _next_round_row(self, number: int, state: FederationState, versions: dict) -> RoundRow:
        default, assignments = self._assignments(state)
        now = self.clock()
        return RoundRow(
            round=number,
            status="open",
            strategy=self.strategy.name,
            opened_at=now,
            deadline=now + self.settings.round_timeout,
            extensions=0,
            base_versions=dict(versions),
            assignments=assignments,
            default_cluster=default,
            closed_at=None,
            n_updates=None,
        )

    def _aggregate(self, row: RoundRow) -> None:
        state, versions = self.current.state, self.current.versions
        limits = self.settings.limits
        weights = {}
        for claims in self.store.updates.claims_of_round(row.round).values():
            weights.update(
                bounded_weights(claims, limits.max_update_samples, limits.max_site_share)
            )
        updates = self.store.updates.of_round(row.round, weights)
        touched = self.store.updates.clusters_of_round(row.round)
        new_state = self.strategy.aggregate(state, updates)
        best, best_changed, reports_ignored = self.best.judge(
            self.store.updates.records_of_round(row.round),
            row.base_versions,
            lambda cluster, version: self.store.models.row(cluster, version)[0],
            len(self._labels()),
            set(new_state.models),
        )
        new_versions = {}
        created = []
        for cluster, weights in new_state.models.items():
            if cluster in versions and cluster not in touched:
                new_versions[cluster] = versions[cluster]
                continue
            digest = hashlib.sha256(weights_to_blob(weights)).hexdigest()[:8]
            version = f"r{row.round}-{cluster}-{digest}"
            new_versions[cluster] = version
            created.append((cluster, version, weights, _parent_version(cluster, versions)))
        with self.store.transaction():
            for cluster, version, weights, base in created:
                self.store.models.add(cluster, version, row.round, base, weights)
            self.store.models.save_federation(
                new_state.round, new_versions, new_state.membership, new_state.extra
            )
            self.store.rounds.close(row.round, len(updates))
            self.best.save(best)
            if reports_ignored:
                self.store.counters.bump("validation_reports_ignored", reports_ignored)
            self.store.updates.drop_deltas(row.round)
            if not self.finished:
                self.store.rounds.add(self._next_round_row(row.round + 1, new_state, new_versions))
        self.current = CurrentModels(new_state, new_versions)
        log.info(
            "round %d aggregated with %s from %d sites: %s",
            row.round,
            self.strategy.name,
            len(updates),
            ", ".join(f"{c}={v}" for c, v in sorted(new_versions.items())),
        )
        for cluster, _, _, _ in created:
            self._publish_model(cluster)
        for cluster in best_changed:
            self._publish_best(cluster)
        for dissolved in set(versions) - set(new_versions):
            self.publish(self.topics.model(dissolved), b"", True)  # clears the retained model
            self.publish(self.topics.best_model(dissolved), b"", True)
        self._publish_round()

    # ------------------------------------------------------------------ publishing
    def _publish_model(self, cluster: str) -> None:
        version = self.current.versions[cluster]
        weights = self.current.weights(cluster)  # in memory: no decode per publish
        self._publish_version(cluster, version, weights, self.topics.model(cluster))

    def _publish_best(self, cluster: str) -> None:
        """The cluster's best version so far (retained; agents may serve it instead)."""
        note = self.best.notes().get(cluster)
        if note is not None:
            weights = self.store.models.weights(cluster, note.version)
            self._publish_version(cluster, note.version, weights, self.topics.best_model(cluster))

    def _publish_version(self, cluster: str, version: str, weights, topic: str) -> None:
        round_no, base = self.store.models.row(cluster, version)
        kind = self.kind
        pin = self.store.meta.get(PIN_KEY[kind]) or ""
        model = GlobalModel(
            cluster=cluster,
            version=version,
            round=round_no,
            labels=self._labels(),
            backbone_sha256=pin if kind == HEAD else "",
            weights=weights,
            base_version=base,
            kind=kind,
            architecture_sha256=pin if kind == NETWORK else "",
        )
        data = build_global_model(self.identity, self.settings.federation, model)
        self.publish(topic, data, True)

    def _labels(self) -> list[str]:
        return (self.store.meta.get("labels") or "").split(",")

    def _publish_round(self) -> None:
        row = self.store.rounds.last()
        if row is None:
            return
        training = dict(self.settings.training)
        training.setdefault("max_delta_norm", self.settings.limits.max_delta_norm)
        # what its updates must be (FTL's first round may ask for moments instead of deltas)
        training.update(self.strategy.round_training(self.current.state))
        versions, default, assignments = row.base_versions, row.default_cluster, row.assignments
        if row.status != "open":
            # Finished: point every site at the final models. The last round's own
            # assignments may name a cluster that round split up (CFL).
            versions = self.current.versions
            default, assignments = self._assignments(self.current.state)
        announcement = RoundAnnouncement(
            round=row.round,
            strategy=row.strategy,
            deadline=row.deadline,
            opened_at=row.opened_at,
            base_versions=versions,
            default_cluster=default,
            assignments=assignments,
            min_sites=self.settings.min_sites,
            training=training,
            status="open" if row.status == "open" else "finished",
            extensions=row.extensions,
            best_versions=self.best.notes(),
        )
        self.publish(
            self.topics.rounds_current,
            build_round(self.identity, self.settings.federation, announcement),
            True,
        )


def _parent_version(cluster: str, versions: dict[str, str]) -> str | None:
    """The version a (possibly new, split-off) cluster's model was derived from."""
    candidate = cluster
    while candidate:
        if candidate in versions:
            return versions[candidate]
        candidate = candidate.rpartition(".")[0]
    return None
