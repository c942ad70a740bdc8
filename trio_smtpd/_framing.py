"""Message body framing: DATA's dot-terminated text (RFC 5321 4.1.1.4, 4.5.2) and
BDAT's counted chunks (RFC 3030).

Both readers take bytes from the front of the connection's receive buffer and keep only
a bounded tail of it, so memory stays bounded whatever a client sends: the DATA reader
holds at most one unfinished line (cut off at the line length limit) and the BDAT reader
holds nothing.

SMTP smuggling (CVE-2023-51764 class): only CRLF "." CRLF ends DATA. ``\\n.\\n``,
``\\r.\\r``, ``\\n.\\r\\n`` and ``\\r\\n.\\n`` are data. By default a bare CR or LF rejects the
message once its real end has arrived.
"""

from __future__ import annotations

from ._replies import Reply

__all__ = ["ChunkReader", "DotReader", "has_long_line"]

_END = b"\r\n.\r\n"
_LONE_END = b".\r\n"

REPLY_TOO_BIG = Reply(552, "Message exceeds fixed maximum message size", "5.3.4")
REPLY_BARE_EOL = Reply(
    550, "Message refused: bare CR or LF in data; lines must end with CRLF", "5.6.0"
)


def _line_too_long_reply(limit: int) -> Reply:
    return Reply(550, f"Message refused: a line is longer than {limit} octets", "5.6.0")


class DotReader:
    """Reads one DATA body; ``read()`` is called whenever the buffer has grown.

    ``size`` counts the message's octets, dot-unstuffed; once the message is refused,
    every octet the client goes on to send counts too (the size it sent, for logs).
    """

    __slots__ = (
        "_at_line_start",
        "_keep_bare",
        "_max_line",
        "_max_size",
        "done",
        "error",
        "size",
    )

    def __init__(self, *, max_size: int | None, max_line: int, keep_bare: bool) -> None:
        self._max_size = max_size
        self._max_line = max_line
        self._keep_bare = keep_bare
        # The CRLF that ended the DATA command counts as the line end before the body.
        self._at_line_start = True
        self.size = 0
        self.error: Reply | None = None
        self.done = False

    def read(self, buf: bytearray) -> bytes:
        """Consume complete lines from ``buf``; return body bytes to hand up (maybe empty).

        Sets ``done`` once the terminating line has been consumed, and ``error`` as soon as
        the message is known to be refused (from then on nothing more is handed up).
        """
        last_lf = buf.rfind(b"\n")
        if last_lf < 0:
            # (A line's stuffed dot is not counted: RFC 5321 4.5.3.1.6.)
            stuffed = self._at_line_start and buf.startswith(b".")
            if len(buf) >= self._max_line + stuffed:
                # One unfinished line is already over the limit: drop it but keep its last
                # octet, which may be the CR of the CRLF that ends it.
                self._fail(_line_too_long_reply(self._max_line))
                self.size += len(buf) - 1
                del buf[:-1]
                self._at_line_start = False
            return b""
        if self._at_line_start and buf.startswith(_LONE_END):
            del buf[:3]
            self.done = True
            return b""
        end = buf.find(_END, 0, last_lf + 1)
        if end >= 0:
            content = bytes(buf[: end + 2])
            del buf[: end + 5]
            self.done = True
        else:
            content = bytes(buf[: last_lf + 1])
            del buf[: last_lf + 1]
        return self._accept(content)

    def _accept(self, content: bytes) -> bytes:
        at_line_start = self._at_line_start
        self._at_line_start = content.endswith(b"\r\n")
        if self.error is not None:
            self.size += len(content)  # (a refused message: what the client sent)
            return b""
        # Dot-unstuffing: a line that starts with "." lost that first "." (RFC 5321 4.5.2).
        # Before the line length check, which does not count that dot (4.5.3.1.6).
        unstuffed = content[1:] if at_line_start and content.startswith(b".") else content
        unstuffed = unstuffed.replace(b"\r\n.", b"\r\n")
        refusal = self._refusal(unstuffed)
        if refusal is not None:
            self._fail(refusal)
            self.size += len(content)
            return b""
        content = unstuffed
        self.size += len(content)
        if self._max_size is not None and self.size > self._max_size:
            self._fail(REPLY_TOO_BIG)
            return b""
        return content

    def _refusal(self, content: bytes) -> Reply | None:
        """Why these complete lines refuse the message, if they do."""
        if not self._keep_bare:
            crlf = content.count(b"\r\n")
            if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
                return REPLY_BARE_EOL
        if has_long_line(content, self._max_line):
            return _line_too_long_reply(self._max_line)
        return None

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply


def has_long_line(content: bytes, limit: int) -> bool:
    """True if a line of ``content`` has ``limit`` octets or more before its LF (CR counts).

    ``content`` starts at a line start and ends with LF. Each step jumps to the last LF
    within ``limit`` octets of a line start, so a long message costs one short search per
    ``limit`` octets rather than one per line: no line that starts before that LF can be
    ``limit`` long, and if there is no LF at all, the line at the start is.
    """
    start, end = 0, len(content)
    while start < end:
        lf = content.rfind(b"\n", start, start + limit)
        if lf < 0:
            return start + limit <= end
        start = lf + 1
    return False


class ChunkReader:
    """Consumes the octets of one BDAT chunk, handing them up unless ``discard``."""

    __slots__ = ("discard", "remaining")

    def __init__(self, size: int, *, discard: bool) -> None:
        self.remaining = size
        self.discard = discard

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def read(self, buf: bytearray) -> bytes:
        take = min(self.remaining, len(buf))
        self.remaining -= take
        if self.discard:
            del buf[:take]
            return b""
        data = bytes(buf[:take])
        del buf[:take]
        return data
