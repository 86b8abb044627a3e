"""Read a ``uid,label`` CSV (a report system's export) into rows, with line numbers for errors."""

from __future__ import annotations

import csv
from pathlib import Path

from ftlct.agent.labels.label_store import LabelError

HEADER = ["uid", "label"]


def read_label_csv(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(uid, label), ...], ["line 2", ...])``; ``LabelError`` for a bad file or row."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel writes a BOM
    except FileNotFoundError as exc:
        raise LabelError(f"no such file: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read: {exc}") from exc
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != HEADER:
        raise LabelError(f"{path.name}: the first line must be the header 'uid,label'")
    rows, where = [], []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise LabelError(f"{path.name} line {line_no}: expected 'uid,label'; nothing stored")
        rows.append((row[0].strip(), row[1].strip()))
        where.append(f"{path.name} line {line_no}")
    if not rows:
        raise LabelError(f"{path.name}: no labels after the header")
    return rows, where
