"""``--print`` and ``--print-raw``: the sinkhole as a mail catcher for development.

Each message that arrived in full is written to standard output once it has been
answered, whatever the answer (the reply is shown): ``--print`` readably (the envelope,
the headers decoded, each text part decoded, attachments listed by name, type and size
but not dumped), ``--print-raw`` as the exact bytes received between two banner lines.
Messages the protocol refused before their end (too large, a bare line ending, a client
that left) are not printed; the log has them.

Everything shown comes from the client, so the readable form escapes control
characters, bidirectional-text overrides and Unicode line separators: a message cannot
move the terminal's cursor, change its colours or disguise one header as another. (The
raw form is raw on purpose.) What the email package cannot render (a header or a part it
cannot parse, a charset whose codec cannot decode with replacements) is shown as it
came, so that every such message is still printed and its session goes on.

A message is kept in memory until it is printed (at most ``--max-message-size``), and
formatted and written in a worker thread, one whole message after another, so that a
slow terminal or pipe holds up only the session whose message is being printed.
"""

from __future__ import annotations

import email.policy
import re
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from typing import BinaryIO, Literal

import trio

from .. import Transaction
from .logs import log_event

__all__ = ["Envelope", "Printer", "render"]

Style = Literal["readable", "raw"]

_RULE = 72
# C0 and C1 controls but tab and newline, DEL, bidirectional embeddings, overrides and
# isolates, and the Unicode line and paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e"
                          "\u2066-\u2069\u2028\u2029]")


@dataclass(frozen=True)
class Envelope:
    """What the printout says about a message besides the message itself."""

    number: int
    session: str
    sender: str
    recipients: Sequence[str]
    replies: Sequence[str]  # one for SMTP, one per recipient for LMTP
    size: int
    client: str = ""  # address, HELO, TLS, AUTH

    @classmethod
    def of(cls, tx: Transaction, number: int) -> Envelope:
        info = tx.info
        client = [f"{info.peer[0]}:{info.peer[1]}" if info.peer else "local",
                  f"HELO {info.helo}" if info.helo else "",
                  (info.tls.version or "TLS") if info.tls else "",
                  f"AUTH {info.authenticated_as}" if info.authenticated_as else ""]
        replies = [str(r) if r is not None else "250 OK" for r in tx.replies]
        return cls(number, info.id, str(tx.sender or ""),
                   [str(r.address) for r in tx.recipients],
                   replies if tx.lmtp else replies[:1], tx.size,
                   ", ".join(part for part in client if part))


def render(envelope: Envelope, data: bytes, style: Style) -> bytes:
    """One message as ``--print`` (``"readable"``) or ``--print-raw`` (``"raw"``) shows it."""
    if style == "raw":
        recipients = ",".join(f"<{r}>" for r in envelope.recipients)
        head = _banner(f"message {envelope.number}: MAIL FROM:<{envelope.sender}> "
                       f"RCPT TO:{recipients} ({envelope.size} octets)")
        tail = _banner(f"end of message {envelope.number}")
        newline = b"" if data.endswith(b"\n") else b"\n"
        return (_printable(head) + "\n").encode() + data + newline + (tail + "\n").encode()
    return (_printable(readable(envelope, data)) + "\n").encode()


def readable(envelope: Envelope, data: bytes) -> str:
    """The envelope, the headers, the text parts and a list of the attachments."""
    lines = [_banner(f"message {envelope.number}", "="),
             f"MAIL FROM: <{envelope.sender}>",
             f"RCPT TO:   {', '.join(f'<{r}>' for r in envelope.recipients)}",
             f"client:    {envelope.client}, session {envelope.session}",
             f"size:      {envelope.size} octets"]
    if len(envelope.replies) == 1:
        lines.append(f"reply:     {envelope.replies[0]}")
    else:
        lines += [f"reply:     <{recipient}> {reply}"
                  for recipient, reply in zip(envelope.recipients, envelope.replies,
                                              strict=True)]
    lines += _message(data.replace(b"\r\n", b"\n"))
    lines.append(_banner(f"end of message {envelope.number}", "="))
    return "\n".join(lines)


def _message(data: bytes) -> list[str]:
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(data)
    # The parser reads Content-Type as it goes, with the header parser that fails on
    # some malformed values (see _headers): the message is printed all the same, whole
    # and as received.
    except Exception:
        return [_banner("the message as received (the email package cannot read it)"),
                data.decode("utf-8", "replace").rstrip("\n")]
    return [_banner("headers"), *_headers(message), *_parts(message)]


def _headers(message: Message) -> list[str]:
    lines = []
    for name, raw in message.raw_items():
        try:
            value = _header(message.policy.header_fetch_parse(name, raw))
        # The email package's header parser fails on some malformed values (IndexError
        # on a lone quote in From:, HeaderParseError and others) instead of recording a
        # defect; a message that was accepted is printed all the same, this header as it
        # came.
        except Exception:
            # (unfolded: the line break before a folded line's white space goes)
            value = re.sub(r"\r?\n(?=[ \t])", "", _as_received(raw)).strip()
        lines.append(f"{name}: {value}")
    return lines


def _as_received(raw: object) -> str:
    """Text as the parser kept it, the bytes received that are not UTF-8 (which it keeps
    as surrogate escapes) as U+FFFD."""
    return str(raw).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parts(message: Message) -> list[str]:
    lines: list[str] = []
    for part in message.walk():
        try:
            lines += _part(part)
        # Reading a part's type, charset or file name goes through the same header
        # parser (see _headers): such a part is shown as received rather than lost.
        except Exception:
            if not part.is_multipart():  # (a multipart's parts are walked in turn)
                lines.append(_banner("a part whose headers cannot be read, as received"))
                lines.append(_as_received(part.get_payload()).rstrip("\n"))
    return lines


def _part(part: Message) -> list[str]:
    lines: list[str] = []
    kind = part.get_content_type()
    if kind == "message/rfc822":
        lines.append(_banner(f"{kind} (a message inside), its parts follow"))
    if part.is_multipart():
        return lines
    if part.get_content_maintype() == "text" and \
            part.get_content_disposition() != "attachment":
        charset = part.get_content_charset()
        lines.append(_banner(kind + (f"; charset={charset}" if charset else "")))
        lines.append(_text(part).rstrip("\n"))
    else:
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        name = part.get_filename() or "(no name)"
        lines.append(_banner(f"attachment: {name} ({kind}, {size} octets), not shown"))
    return lines


def _text(part: Message) -> str:
    """A text part decoded by its transfer encoding and charset. Undeclared 8-bit text
    is most often UTF-8 (of which US-ASCII is a part); an unknown charset, or one whose
    codec cannot decode with replacements, is read as UTF-8 too, and what does not
    decode becomes U+FFFD rather than an error."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode("utf-8" if charset == "us-ascii" else charset, "replace")
    # LookupError: no such codec, or not a text one (base64). ValueError: a codec that
    # refuses "replace" (idna, punycode: UnicodeError) or a name with a NUL in it.
    except (LookupError, ValueError):
        return payload.decode("utf-8", "replace")


def _header(value: object) -> str:
    # The default policy gives headers decoded (RFC 2047) and unfolded.
    return " ".join(str(value).split("\n"))


def _banner(title: str, fill: str = "-") -> str:
    head = f"{fill * 3} {title} "
    return head + fill * max(3, _RULE - len(head))


def _printable(text: str) -> str:
    """The text with what could act on a terminal written as escapes (``\\x1b``)."""
    text = text.replace("\r\n", "\n")
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


class Printer:
    """Keeps each message's bytes as they arrive and prints the message once answered."""

    def __init__(self, style: Style, stream: BinaryIO | None = None) -> None:
        self.style = style
        self._stream = stream if stream is not None else sys.stdout.buffer
        # By transaction; a message whose client left is never printed and is dropped
        # with its transaction.
        self._kept: weakref.WeakKeyDictionary[Transaction, list[bytes]] = \
            weakref.WeakKeyDictionary()
        self._lock = trio.Lock()  # one whole message at a time, in order
        self._count = 0
        self._broken = False

    def keep(self, tx: Transaction, chunk: bytes) -> None:
        """One more piece of ``tx``'s message, as it arrives."""
        self._kept.setdefault(tx, []).append(chunk)

    async def done(self, tx: Transaction) -> None:
        """``tx`` has been answered: print it (in a worker thread), then forget it."""
        chunks = self._kept.pop(tx, [])
        if self._broken:
            return
        self._count += 1
        envelope = Envelope.of(tx, self._count)
        async with self._lock:
            error = await trio.to_thread.run_sync(self._write, envelope, b"".join(chunks))
        if error is not None:
            self._broken = True  # (say it once; the server goes on without printing)
            log_event("print", error=str(error), effect="messages are no longer printed")

    def _write(self, envelope: Envelope, data: bytes) -> OSError | None:
        try:
            self._stream.write(render(envelope, data, self.style))
            self._stream.flush()
        except OSError as exc:  # a closed pipe (trio-smtpd --print | head), a full disk
            return exc
        return None
