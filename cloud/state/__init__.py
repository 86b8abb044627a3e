"""The cloud's durable state (one SQLite file), split into one owner per table or concern."""

from ftlct.cloud.state.rounds import RoundRow
from ftlct.cloud.state.store import DB_NAME, StateStore

__all__ = ["DB_NAME", "RoundRow", "StateStore"]
