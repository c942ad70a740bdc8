"""One structured log line per connection event and per transaction.

``--log-format json`` writes JSON lines (one object per line: ``time``, ``event`` and the
event's fields); ``text`` writes ``time event key=value ...``. Library messages (TLS
failures, timeouts, errors) go through the same handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["configure_logging", "log_event"]

_events = logging.getLogger("trio_smtpd.events")


def log_event(event: str, **fields: Any) -> None:
    _events.info(event, extra={"fields": fields})


class _Formatter(logging.Formatter):
    def __init__(self, style: Literal["text", "json"]) -> None:
        super().__init__()
        self._json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        now = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        if fields:
            event = record.getMessage()
        else:
            event, fields = "log", {"level": record.levelname.lower(),
                                    "message": record.getMessage()}
            if record.exc_info:
                fields["exception"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps({"time": now, "event": event, **fields}, default=str,
                              ensure_ascii=False)
        parts = [now, event]
        parts += [f"{key}={_text(value)}" for key, value in fields.items() if value is not None]
        return " ".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(map(str, value))
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def configure_logging(style: Literal["text", "json"], stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(style))
    root = logging.getLogger("trio_smtpd")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
