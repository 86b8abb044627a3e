"""Each cluster's best global version by the sites' validation reports: judged, kept, announced.

An update reports how its base version (the round's global head of its
cluster) did on the site's held-out slices (``protocol.validation_report``).
When a round is aggregated, each cluster's reports are summed and scored
(``cloud/model_selection.py``): the federated validation score of the version
that round started from. A version must beat the cluster's best so far
strictly to replace it. The best of each cluster is kept in the state's meta,
named in ``rounds/current`` (``best_versions``) and retained on
``best/{cluster}``, so agents may serve the best version, not only the last.

The last version of a run has no score (sites report a version in the round
after it); a cluster CFL dissolves loses its note; a report that is not a
matrix of the federation's label set is ignored (counted), never half-used.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ftlct.cloud.model_selection import BestVersion, Candidate, federated_validation_score
from ftlct.cloud.state.meta import FederationMeta
from ftlct.protocol.messages import BestVersionNote
from ftlct.protocol.validation_report import ReportError, read_report

log = logging.getLogger("ftlct.cloud.best_versions")

META_KEY = "best_versions"

VersionRound = Callable[[str, str], int]  # (cluster, version) -> the round that made it


class BestVersions:
    def __init__(self, meta: FederationMeta):
        self.meta = meta

    def notes(self) -> dict[str, BestVersionNote]:
        raw = json.loads(self.meta.get(META_KEY) or "{}")
        return {cluster: BestVersionNote(**note) for cluster, note in raw.items()}

    def judge(
        self,
        records: list[dict],
        base_versions: dict[str, str],
        version_round: VersionRound,
        n_classes: int,
        live_clusters: set[str],
    ) -> tuple[dict[str, BestVersionNote], list[str], int]:
        """``(notes after this round, clusters whose best changed, reports ignored)``.

        ``records`` are the round's updates (``site``, ``cluster``, ``metrics``);
        nothing is written: the caller saves the notes in its transaction.
        """
        reports: dict[str, list[np.ndarray]] = defaultdict(list)
        ignored = 0
        for record in records:
            try:
                matrix = read_report(record["metrics"], n_classes)
            except ReportError as exc:
                ignored += 1
                log.warning("ignored the validation report of %s: %s", record["site"], exc)
                continue
            if matrix is not None and matrix.sum() > 0:
                reports[record["cluster"]].append(matrix)
        notes = {c: n for c, n in self.notes().items() if c in live_clusters}
        changed = []
        for cluster, matrices in sorted(reports.items()):
            version = base_versions.get(cluster)
            if version is None:
                continue
            score = federated_validation_score(matrices)
            n_val = int(sum(int(m.sum()) for m in matrices))
            held = notes.get(cluster)
            best = BestVersion(Candidate(held.version, held.round, held.score) if held else None)
            kept = best.offer(Candidate(version, version_round(cluster, version), score))
            if kept is not best:
                notes[cluster] = BestVersionNote(kept.best.version, kept.best.round, score, n_val)
                changed.append(cluster)
        return notes, changed, ignored

    def save(self, notes: dict[str, BestVersionNote]) -> None:
        self.meta.set(META_KEY, json.dumps({c: n.to_payload() for c, n in notes.items()}))
