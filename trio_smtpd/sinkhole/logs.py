"""One structured log line per connection event and per transaction.

``--log-format json`` writes JSON lines (one object per line: ``time``, ``event`` and the
event's fields); ``text`` writes ``time event key=value ...``. Library messages (TLS
failures, timeouts, errors) go through the same handler.

A value never splits a line nor hides in one: JSON lines write the Unicode line and format
controls as ``\\u`` escapes (:func:`.safety.json_safe`), and the text form quotes (as a
JSON string, every non-ASCII character escaped) any value that is not plain printable
text or holds a space, quote, ``=`` or backslash.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

from .safety import json_safe

__all__ = ["configure_logging", "log_event"]

_events = logging.getLogger("trio_smtpd.events")
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


def log_event(event: str, **fields: Any) -> None:
    writer = _writer
    if writer is None:
        _events.info(event, extra={"fields": fields})
    else:
        writer.write(_format(writer.json, time.time(), event, fields))


class _EventWriter:
    """Event lines go straight to the stream: one a transaction under load, and the
    logging module's records, locks and lookups cost more than the line's own work."""

    def __init__(self, stream: Any, json_lines: bool) -> None:
        self.stream = stream
        self.json = json_lines

    def write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # as logging does: a log that cannot be written never stops the server


_writer: _EventWriter | None = None


_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds; the part up to the second made once a second."""
    global _second
    whole = math.floor(created)
    micros = round((created - whole) * 1_000_000)  # as datetime.fromtimestamp rounds
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    second, prefix = _second
    if whole != second:
        prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, prefix)
    return f"{prefix}.{micros // 1000:03d}+00:00"


def _format(json_lines: bool, created: float, event: str, fields: dict[str, Any]) -> str:
    now = _timestamp(created)
    if json_lines:
        return json_safe(_JSON.encode({"time": now, "event": event, **fields}))
    parts = [now, event]
    parts += [f"{key}={_text(value)}" for key, value in fields.items() if value is not None]
    return " ".join(parts)


class _Formatter(logging.Formatter):
    def __init__(self, style: Literal["text", "json"]) -> None:
        super().__init__()
        self._json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        if fields:
            event = record.getMessage()
        else:
            event, fields = "log", {"level": record.levelname.lower(),
                                    "message": record.getMessage()}
            if record.exc_info:
                fields["exception"] = self.formatException(record.exc_info)
        return _format(self._json, record.created, event, fields)


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = ",".join(map(str, value))
    text = str(value)
    plain = text.isprintable() and not any(c in text for c in ' "=\\')
    return text if text and plain else json.dumps(text)


def configure_logging(style: Literal["text", "json"], stream: Any = None) -> None:
    global _writer
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(style))
    root = logging.getLogger("trio_smtpd")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    _writer = _EventWriter(stream, style == "json")
    # This process is the program's own: skip what the records would carry but the
    # lines never show (the logging docs' "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
