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
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

import trio
import trio.testing

from .safety import json_safe

__all__ = ["configure_logging", "flush", "log_event", "write_when_idle"]

_events = logging.getLogger("trio_smtpd.events")
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


def log_event(event: str, **fields: Any) -> None:
    writer = _writer
    if writer is None:
        _events.info(event, extra={"fields": fields})
    else:
        writer.write(_format(writer.json, time.time(), event, fields))


class _EventWriter:
    """Where every line goes: straight to the stream, or, while :func:`write_when_idle`
    runs, kept and written together (see there). One event a transaction under load: the
    logging module's records, locks and lookups would cost more than the line's own work.
    """

    #: Characters kept before they are written whatever the event loop is doing.
    LIMIT = 64 * 1024

    def __init__(self, stream: Any, json_lines: bool) -> None:
        self.stream = stream
        self.json = json_lines
        self._kept: list[str] = []
        self._kept_size = 0
        self._lock = threading.Lock()
        #: The thread whose lines are kept (the event loop's), while one is.
        self._keeping_for: int | None = None
        self.kept_one = trio.Event()

    def write(self, line: str) -> None:
        with self._lock:
            if threading.get_ident() != self._keeping_for:
                # Another thread (or nobody flushing): whatever was kept goes first.
                self._write([*self._kept, line])
                self._kept.clear()
                self._kept_size = 0
                return
            self._kept.append(line)
            self._kept_size += len(line)
            if self._kept_size < self.LIMIT:
                if len(self._kept) == 1:
                    self.kept_one.set()
                return
            self._write(self._kept)
            self._kept.clear()
            self._kept_size = 0

    def flush(self) -> None:
        with self._lock:
            if self._kept:
                self._write(self._kept)
                self._kept.clear()
                self._kept_size = 0

    def keep_for(self, thread: int | None) -> None:
        self.flush()
        with self._lock:
            self._keeping_for = thread

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # as logging does: a log that cannot be written never stops the server


class _KeptLinesHandler(logging.Handler):
    """The library's records, formatted, among the event lines and in their order."""

    def __init__(self, writer: _EventWriter, style: Literal["text", "json"]) -> None:
        super().__init__()
        self.setFormatter(_Formatter(style))
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._writer.write(line)

    def flush(self) -> None:
        self._writer.flush()


async def write_when_idle(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Keep this event loop's log lines and write them together: once every task is
    waiting (the loop would sleep next), or after at most ``KEPT_FOR`` seconds, or once
    ``_EventWriter.LIMIT`` characters are kept. Run it as a task for the life of the
    server; lines still kept when it ends are written then.

    What a crash can lose is the lines of the last moment the loop was busy: never a
    message (a message is on disk before its 250, whatever its log line does), and
    nothing on an orderly exit or a second signal's immediate one (:func:`flush`).
    """
    writer = _writer
    if writer is None:
        task_status.started()
        await trio.sleep_forever()
        return
    writer.kept_one = trio.Event()
    writer.keep_for(threading.get_ident())
    task_status.started()
    try:
        while True:
            await writer.kept_one.wait()
            writer.kept_one = trio.Event()
            with trio.move_on_after(KEPT_FOR):
                await trio.testing.wait_all_tasks_blocked()
            writer.flush()
    finally:
        writer.keep_for(None)


#: The longest a line is kept while the event loop stays busy, in seconds.
KEPT_FOR = 0.5


def flush() -> None:
    """Write every kept line now (before the process exits)."""
    if _writer is not None:
        _writer.flush()


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
    if _writer is not None:
        _writer.flush()
    _writer = _EventWriter(stream, style == "json")
    root = logging.getLogger("trio_smtpd")
    root.handlers[:] = [_KeptLinesHandler(_writer, style)]
    root.setLevel(logging.INFO)
    root.propagate = False
    # This process is the program's own: skip what the records would carry but the
    # lines never show (the logging docs' "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
