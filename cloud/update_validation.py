"""Checks a signed, decoded update must pass before it counts for the open round.

The wire layer (``protocol.exchange.open_update``) has already checked size,
form, enrolment and signature. Here: the round's own rules, then the
strategy's ``check_update`` (the same check its ``aggregate`` applies: tensor
names, shapes, finite values), then the norm bound. An update of another kind
than the strategy takes in the open round (statistics for a head federation,
a delta for a closed-form one or for a standardised FTL federation's moments
round) is ``wrong_update_kind``; statistics and moments have no delta norm
(the strategy bounds each embedding instead). Each failure is a
``Rejection`` with a stable reason, the key of ``updates_rejected`` in
``ftl-cloud status --json``.
"""

from __future__ import annotations

from ftlct.cloud.current_models import CurrentModels
from ftlct.cloud.state import RoundRow, StateStore
from ftlct.cloud.strategies import SiteUpdate, Strategy
from ftlct.cloud.strategies.base import UpdateMismatch
from ftlct.cloud.strategies.strategy_utils import l2_norm
from ftlct.protocol.messages import UpdateMessage

# every reason the cloud may count, wire-level ones included (for docs and tests)
REASONS = (
    "oversize",
    "malformed",
    "bad_dtype",
    "wrong_kind",
    "wrong_federation",
    "unknown_site",
    "bad_signature",
    "wrong_sender",
    "replay",
    "wrong_round",
    "wrong_cluster",
    "wrong_base_version",
    "wrong_update_kind",
    "already_submitted",
    "shape_mismatch",
    "bad_dtype",
    "bad_samples",
    "non_finite",
    "norm_bound",
)


class Rejection(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class Duplicate(Exception):
    """An update already stored (same update_id, same site): a resend, not stored again."""


def check_update(
    message: UpdateMessage,
    current: RoundRow | None,
    store: StateStore,
    models: CurrentModels,
    strategy: Strategy,
    max_delta_norm: float,
) -> float:
    """The update's L2 norm if it may count for ``current``; else ``Rejection`` / ``Duplicate``.

    The checks read in this order: a stored update_id (``Duplicate``, ``replay``), the
    round's rules, a second update of the site in the round (``already_submitted``), the
    strategy's check and the norm bound. The store is only asked once something fails:
    an update that passes is stored with ``UpdateStore.add``, which refuses a stored
    update_id or a site's second update, and then ``check_stored`` says which it was.
    """
    try:
        _check_round_rules(message, current, strategy.update_kind_for(models.state), strategy)
    except Rejection:
        _check_new(message, store)
        raise
    try:
        return _check_contents(message, models, strategy, max_delta_norm)
    except Rejection:
        check_stored(message, current, store)
        raise


def check_stored(message: UpdateMessage, current: RoundRow, store: StateStore) -> None:
    """``Duplicate`` or a ``Rejection`` (``replay``, ``already_submitted``) if the store already
    holds this update_id or an update of this site in ``current``; nothing otherwise."""
    _check_new(message, store)
    if store.updates.of(current.round, message.site) is not None:
        raise Rejection(
            "already_submitted", f"{message.site} already has an update in round {current.round}"
        )


def _check_new(message: UpdateMessage, store: StateStore) -> None:
    known = store.updates.find(message.update_id)
    if known is not None:
        # The same update again (a lost receipt, a reconnect): the first copy counts, in
        # whatever round it was accepted; the site is told again that it landed.
        if known.site == message.site:
            raise Duplicate(message.update_id)
        raise Rejection("replay", f"update id {message.update_id} was already used by another site")


def _check_round_rules(
    message: UpdateMessage, current: RoundRow | None, kind: str, strategy: Strategy
) -> None:
    if current is None or current.status != "open" or message.round != current.round:
        open_round = current.round if current is not None and current.status == "open" else None
        raise Rejection(
            "wrong_round", f"update for round {message.round}, open round is {open_round}"
        )
    expected_cluster = current.cluster_for(message.site)
    if message.cluster != expected_cluster:
        raise Rejection(
            "wrong_cluster", f"update for cluster {message.cluster}, site trains {expected_cluster}"
        )
    expected_base = current.base_versions.get(message.cluster)
    if message.base_version != expected_base:
        raise Rejection(
            "wrong_base_version",
            f"update from base {message.base_version}, round {current.round} uses {expected_base}",
        )
    if message.kind != kind:
        raise Rejection(
            "wrong_update_kind",
            f"{message.kind} update, the {strategy.name} strategy takes {kind} this round",
        )


def _check_contents(
    message: UpdateMessage, models: CurrentModels, strategy: Strategy, max_delta_norm: float
) -> float:
    update = SiteUpdate(message.site, message.delta, message.n_samples, message.cluster)
    try:
        strategy.check_update(models.state, update)  # what aggregate() will check again
    except UpdateMismatch as exc:
        raise Rejection(exc.reason, str(exc)) from exc
    norm = l2_norm(message.delta)
    if message.kind == "delta" and norm > max_delta_norm:
        raise Rejection("norm_bound", f"delta norm {norm:.4g} exceeds {max_delta_norm:.4g}")
    return norm
