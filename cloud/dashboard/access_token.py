"""The dashboard's bearer token: a random secret in ``{state_dir}/dashboard.token`` (0600).

Whoever can read the state dir can read the dashboard; nobody else. The token
is compared in constant time, whatever form it arrives in (query, cookie, header).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "dashboard.token"
TOKEN_BYTES = 32


class TokenError(OSError):
    """The token file exists but cannot be trusted (readable by others, empty)."""


def dashboard_token(state_dir: str | os.PathLike) -> str:
    """The state dir's dashboard token, created (mode 0600, never overwritten) on first use."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return _read_token(path)


def _read_token(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise TokenError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
    token = path.read_text().strip()
    if len(token) < 16:
        raise TokenError(f"{path} holds no usable token: remove it and restart to create one")
    return token


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an absent token never matches."""
    if not given:
        return False
    return hmac.compare_digest(expected.encode(), given.strip().encode())
