"""Who this site is: its name and federation (settings, else what serve recorded) and its key pair.

The Ed25519 key pair lives in ``DATA_DIR/keys/{site}.ed25519`` (0600) and
``.ed25519.pub``; ``ftl-agent identity`` prints the public key for
``ftl-cloud enroll``.
"""

from __future__ import annotations

from pathlib import Path

from ftlct.agent.settings import AgentSettings
from ftlct.agent.store.database import Database
from ftlct.agent.store.layout import restrict_tree
from ftlct.protocol.identity import Identity, load_or_create_identity

SITE_META = "federation.site"
NAME_META = "federation.name"


def keys_dir(data_root: Path) -> Path:
    return Path(data_root) / "keys"


def site_identity(data_root: Path, site: str) -> Identity:
    """The site's key pair, created on first use; both files 0600 like all of the data dir."""
    identity = load_or_create_identity(keys_dir(data_root), site)
    restrict_tree(keys_dir(data_root))
    return identity


def remember_names(db: Database, site: str, federation: str) -> None:
    """Record site and federation so ``ftl-agent train``/``status`` need no flags later."""
    db.set_meta(SITE_META, site)
    db.set_meta(NAME_META, federation)


def recorded_names(db: Database) -> tuple[str | None, str | None]:
    """``(site, federation)`` as ``serve`` last recorded them."""
    return db.get_meta(SITE_META), db.get_meta(NAME_META)


def federation_names(settings: AgentSettings, db: Database) -> tuple[str | None, str | None]:
    """``(site, federation)`` from the settings, else as ``serve`` last recorded them."""
    site, federation = recorded_names(db)
    return settings.federation.site or site, settings.federation.name or federation
