"""Install a verified global head: gate it, write a model dir, hot-swap, remember it for restarts.

A new head becomes ``DATA_DIR/models/{version}/`` (``ModelDir.with_head``:
backbone hard-linked, ``head.onnx`` built with numpy/onnx, manifest written
last), then ``engine.swap`` makes it current in one reference
assignment: jobs in flight finish on the old snapshot, later ones use the new
one, none fails. ``DATA_DIR/models/current`` names the installed dir so a
restart serves it (``choose_model_dir``), as long as it still fits the
configured model (same backbone and labels).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

from ftlct.agent.inference.engine import InferenceEngine
from ftlct.agent.logs import log_event
from ftlct.agent.settings import TrainingSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.layout import FILE_MODE, restrict_tree
from ftlct.agent.sync.model_events import ModelEvents
from ftlct.agent.training.gate import GateResult, judge_head
from ftlct.agent.training.labelled_data import holdout_split, labelled_data
from ftlct.export.files import atomic_write_bytes
from ftlct.export.model_dir import ModelDir, ModelDirError
from ftlct.protocol.errors import is_exit
from ftlct.protocol.messages import GlobalModel

log = logging.getLogger(__name__)

MODELS = "models"
MODEL_ROUND_META = "federation.model_round"
POINTER = "current"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def models_dir(data_root: Path) -> Path:
    return Path(data_root) / MODELS


def dir_name(version: str) -> str:
    return (
        version
        if _SAFE.match(version)
        else "v-" + hashlib.sha256(version.encode()).hexdigest()[:16]
    )


def choose_model_dir(configured: Path, data_root: Path) -> Path:
    """The installed federation head if it fits ``configured`` (backbone, labels), else ``configured``."""
    pointer = models_dir(data_root) / POINTER
    if not pointer.is_file():
        return configured
    installed = models_dir(data_root) / pointer.read_text().strip()
    try:
        base, mine = ModelDir.load(configured), ModelDir.load(installed)
    except ModelDirError as exc:
        log_event(log, "installed_model_unusable", logging.WARNING, reason=str(exc))
        return configured
    if mine.backbone_sha256 != base.backbone_sha256 or mine.labels != base.labels:
        log_event(
            log,
            "installed_model_ignored",
            logging.WARNING,
            installed=mine.version,
            reason="another backbone or label set than --model",
        )
        return configured
    return installed


class ModelInstaller:
    """Gates and installs the global heads the inbox offers (``offer``), for one engine."""

    def __init__(
        self,
        engine: InferenceEngine,
        db: Database,
        data_root: Path,
        settings: TrainingSettings,
        events: ModelEvents,
    ):
        self.engine = engine
        self.db = db
        self.data_root = Path(data_root)
        self.settings = settings
        self.events = events

    def offer(self, model: GlobalModel) -> None:
        """``consider`` a head for this site; a head that does not load leaves the old one."""
        try:
            outcome = self.consider(model)
        except BaseException as exc:  # a loader's panic too (is_exit)
            if is_exit(exc):
                raise
            self.events.record(model.cluster, model.version, "refused", str(exc))
            log_event(
                log, "model_install_failed", logging.ERROR, version=model.version, error=str(exc)
            )
            return
        if outcome == "installed":
            log_event(log, "model_installed", version=model.version, round=model.round)

    def consider(self, model: GlobalModel) -> str:
        """Install ``model`` unless it is current, older, or refused; returns what happened."""
        current = self.engine.current
        if model.version == current.version:
            return "current"
        if model.round < installed_round(self.db):
            return "older"
        if self.events.gate_refused(model.version):
            return "refused_before"
        gate = self.gate(model)
        if not gate.accepted:
            self.events.record(
                model.cluster,
                model.version,
                "gate_refused",
                gate.reason,
                gate.f1_current,
                gate.f1_candidate,
            )
            log_event(
                log,
                "model_gate_refused",
                logging.WARNING,
                version=model.version,
                kept=current.version,
                reason=gate.reason,
            )
            return "gate_refused"
        self.install(model)
        self.events.record(
            model.cluster,
            model.version,
            "installed",
            gate.reason,
            gate.f1_current,
            gate.f1_candidate,
        )
        return "installed"

    def gate(self, model: GlobalModel) -> GateResult:
        t = self.settings
        if not t.gate:
            return GateResult(True, "gate off")
        current = self.engine.current
        data = labelled_data(self.data_root, self.db, current.backbone_sha256, current.labels)
        _, val_idx = holdout_split(data, t.val_fraction, t.seed)
        val = data.take(val_idx)
        return judge_head(
            current.model.head_weights(),
            model.weights,
            val.vectors,
            val.labels,
            len(current.labels),
            t.gate_max_f1_drop,
            t.gate_min_samples,
        )

    def install(self, model: GlobalModel) -> None:
        base = self.engine.current.model
        out = models_dir(self.data_root) / dir_name(model.version)
        if out.exists():  # a half-written dir from a crash, or a re-install: write it afresh
            shutil.rmtree(out)
        extra = {
            "federation": {
                "cluster": model.cluster,
                "round": model.round,
                "base_version": model.base_version,
                "weights_sha256": model.weights_sha256,
            }
        }
        written = base.with_head(out, model.weights, model.version, trained=True, extra=extra)
        restrict_tree(out)  # the model writer makes its files 0644; the data dir's are 0600
        self.engine.swap(written.path)  # ModelError: the old model stays; offer() records it
        atomic_write_bytes(
            models_dir(self.data_root) / POINTER, (out.name + "\n").encode(), mode=FILE_MODE
        )
        self.db.set_meta(MODEL_ROUND_META, str(model.round))
        self._prune(keep={out.name, base.path.name})

    def _prune(self, keep: set[str]) -> None:
        """Old installed heads go (their backbone links cost nothing); the last few stay."""
        root = models_dir(self.data_root)
        dirs = sorted(
            (p for p in root.iterdir() if p.is_dir() and p.name not in keep),
            key=lambda p: p.stat().st_mtime,
        )
        for old in dirs[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def installed_round(db: Database) -> int:
    """The round of the global head in use (-1: none installed yet)."""
    return int(db.get_meta(MODEL_ROUND_META) or -1)
