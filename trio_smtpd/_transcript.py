"""Session transcripts: every line read and written, with its direction and time.

``Transcript`` is an ``Observer`` (see ``_observer.py``) that writes one line of text per
protocol line, in the manner of the Go smtpd's connection log::

    2026-12-01T18:02:11.482+00:00 4f2a.7 < EHLO client.example
    2026-12-01T18:02:11.483+00:00 4f2a.7 > 250-mx.example.org greets client.example
    2026-12-01T18:02:11.490+00:00 4f2a.7 < AUTH PLAIN [redacted]
    2026-12-01T18:02:11.512+00:00 4f2a.7 < [message data: 1482 octets]

AUTH secrets never reach it; message bodies are summarised unless ``bodies=True``, when
each line of data is written too (marked ``<|``). What the client sent, and the replies
(which echo it), are escaped so that a transcript line is always one line: control
characters, and Unicode line and format controls, become ``\\xNN``/``\\uNNNN``/
``\\UNNNNNNNN`` (the categories are in ``_unicode.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ._replies import Reply
from ._unicode import escape_unsafe

__all__ = ["Transcript", "escape"]


def escape(text: str) -> str:
    """``text`` with every character that could break or disguise a line escaped: those
    of the general categories in ``_unicode.UNSAFE_CATEGORIES`` (controls, format
    characters, line and paragraph separators...), as ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``."""
    return escape_unsafe(text, _escaped)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    # Eight digits beyond the BMP, so that "\\ue0041" is not read as U+E004 then "1".
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class Transcript:
    """Writes a session's lines with ``write(line)`` (each without its newline)."""

    def __init__(self, write: Callable[[str], None], session_id: str, *,
                 bodies: bool = False) -> None:
        self._write = write
        self._id = session_id
        #: Message data too, line by line (see the module docstring).
        self.wants_data = bodies

    def received(self, line: str) -> None:
        """A line from the client, escaped."""
        self._line("<", escape(line))

    def data(self, chunk: bytes) -> None:
        """Message data, line by line, when ``bodies=True``."""
        if not self.wants_data:
            return
        for line in chunk.split(b"\n"):
            if line:
                self._line("<|", escape(line.rstrip(b"\r").decode("utf-8",
                                                                  "backslashreplace")))

    def sent(self, reply: bytes) -> None:
        """Each line of a reply, escaped: replies echo the client's text."""
        for line in reply.decode("utf-8", "replace").split("\r\n"):
            if line:
                self._line(">", escape(line))

    def refused(self, command: str, reply: Reply) -> None:
        """Nothing more: the reply itself is in the transcript already."""

    def _line(self, direction: str, text: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._write(f"{now} {self._id} {direction} {text}")
