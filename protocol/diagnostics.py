"""What ``ftl-agent doctor`` and ``ftl-cloud doctor`` share: findings, their report, and the
checks both programs run on the host (file modes, free disk, a port to bind).

A finding is one check's verdict (ok, warning or error) with the command that
fixes it; a report exits non-zero as soon as one finding is an error.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK, WARNING, ERROR = "ok", "warning", "error"


@dataclass(frozen=True)
class Finding:
    check: str  # config, disk, keys, broker, ...
    level: str  # ok | warning | error
    message: str
    fix: str = ""  # the command (or edit) that fixes it


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)

    def ok(self, check: str, message: str) -> None:
        self.findings.append(Finding(check, OK, message))

    def warning(self, check: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(check, WARNING, message, fix))

    def error(self, check: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(check, ERROR, message, fix))

    def add(self, finding: Finding | None) -> None:
        if finding is not None:
            self.findings.append(finding)

    def count(self, level: str) -> int:
        return sum(1 for f in self.findings if f.level == level)

    @property
    def failed(self) -> bool:
        return self.count(ERROR) > 0

    def to_json(self) -> dict:
        return {
            "ok": not self.failed,
            "errors": self.count(ERROR),
            "warnings": self.count(WARNING),
            "checks": [asdict(f) for f in self.findings],
        }

    def render(self) -> str:
        lines = []
        for f in self.findings:
            lines.append(f"{f.level.upper():<8} {f.check:<12} {f.message}")
            if f.fix:
                lines.append(f"{'':<8} {'':<12} fix: {f.fix}")
        verdict = "no problems found" if not self.findings or not self.failed else "problems found"
        lines.append(f"{verdict}: {self.count(ERROR)} error(s), {self.count(WARNING)} warning(s)")
        return "\n".join(lines)


def private_file(check: str, path: Path, what: str, group_readable: bool = True) -> Finding:
    """A secret file must not be readable by others (nor group-writable, nor group-readable
    unless ``group_readable``: the systemd setups share /etc/ftl-ct files with a group)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return Finding(check, ERROR, f"{what} {path} does not exist", f"check the path of {what}")
    except OSError as exc:
        return Finding(check, ERROR, f"{what} {path}: {exc.strerror}", f"ls -l {path}")
    mode = stat.S_IMODE(info.st_mode)
    allowed = 0o640 if group_readable else 0o600
    if mode & ~allowed:
        return Finding(
            check,
            ERROR,
            f"{what} {path} has mode {mode:o}: others (or the group) can read or change it",
            f"chmod {allowed:o} {path}",
        )
    if info.st_uid != os.geteuid() and os.geteuid() != 0 and not os.access(path, os.R_OK):
        return Finding(check, ERROR, f"{what} {path} is not readable by this user", f"ls -l {path}")
    return Finding(check, OK, f"{what} {path} is private (mode {mode:o})")


def free_disk(
    check: str, path: Path, error_below: int, warn_below: int, setting: str = ""
) -> Finding:
    """Free space on the file system of ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    shown = f"{free / 2**30:.2f} GiB free on the file system of {path}"
    limit = f" (below {setting} = {error_below / 2**20:.0f} MiB)" if setting else ""
    if free < error_below:
        return Finding(
            check,
            ERROR,
            f"{shown}{limit}: new data would be refused",
            f"free space under {probe} (df -h {probe}; du -xsh {probe}/*)"
            + (f" or lower {setting}" if setting else ""),
        )
    if free < warn_below:
        return Finding(
            check,
            WARNING,
            f"{shown}: less than {warn_below / 2**20:.0f} MiB, close to the watermark",
            f"free space under {probe} (df -h {probe})",
        )
    return Finding(check, OK, shown)


def bind_error(host: str, port: int) -> int | None:
    """None if ``host:port`` can be bound now (nothing listens there), else the errno."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return None


def connectable_host(host: str) -> str:
    """Where to dial a listener bound to ``host`` (a wildcard address dials loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


CLOCK_TOLERANCE_S = 60.0


def round_clock(announcement, now: float, tolerance: float = CLOCK_TOLERANCE_S) -> Finding:
    """This clock against the cloud's, as far as a round announcement bounds it: the cloud
    opened the round at ``opened_at`` (its clock), and extends or closes an open round at
    its deadline, so while it runs its clock lies between the two."""
    behind = announcement.opened_at - now
    if behind > tolerance:
        return Finding(
            "clock",
            ERROR,
            f"round {announcement.round} was opened {behind:.0f} s in this clock's future: "
            "this clock is behind the cloud's",
            "sync the clock: timedatectl set-ntp true (then timedatectl timesync-status)",
        )
    late = now - announcement.deadline
    if announcement.status == "open" and late > tolerance:
        return Finding(
            "clock",
            WARNING,
            f"open round {announcement.round}'s deadline passed {late:.0f} s ago by this clock: "
            "this clock runs ahead of the cloud's, or the cloud is not running",
            "timedatectl timesync-status here; ftl-cloud status at the operator",
        )
    return Finding(
        "clock", OK, f"consistent with round {announcement.round} (within {tolerance:.0f} s)"
    )
