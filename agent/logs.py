"""Structured logs: ``event key=value ...`` for people, or one JSON object per line.

Log lines carry UIDs, counts and reasons, never patient data (names, IDs, dates):
call sites pass only such fields to ``log_event``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any

from ftlct.agent.settings import LoggingSettings


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, "fields": fields})


def _fields_text(fields: dict) -> str:
    parts = []
    for key, value in fields.items():
        text = str(value)
        parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
    return " ".join(parts)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None)
        message = record.getMessage()
        line = f"{stamp} {record.levelname:<7} {record.name}: {message}"
        if fields:
            line += " " + _fields_text(fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        doc.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, default=str)


def configure_logging(settings: LoggingSettings) -> None:
    """Route the agent's logs to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # pynetdicom's own handlers can print dataset contents; keep it to warnings.
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom's warnings about odd values quote the values, which may be patient data.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom\.")
