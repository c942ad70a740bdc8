"""A message read as it streams past, keeping only what the checks need: the header
section (bounded) and the body hashes its signatures ask for."""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from dkim.util import InvalidTagValueList, parse_tag_value

from ._body import HASHES, BodyHashes, Canonicalization, Key

__all__ = ["MAX_HEADER", "MessageReader", "Signature"]

#: The header section is kept in memory for the checks; past this, nothing is checked.
MAX_HEADER = 1 << 20
#: DKIM signatures examined per message (the first, topmost ones); ARC sets per RFC 8617.
MAX_SIGNATURES = 10
MAX_ARC_SETS = 50
# The end of the header section as dkimpy finds it: the first empty line, lines being
# split at \r?\n.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LEADING_BLANK = re.compile(rb"\r?\n")
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# RFC 6376 3.5: l= is 1*76DIGIT (and int() of a longer one may raise).
_LENGTH = re.compile(rb"[0-9]{1,76}")


@dataclass(frozen=True)
class Signature:
    """A DKIM-Signature or ARC-Message-Signature, its tags parsed (or why not)."""

    kind: str  # "dkim-signature" or "arc-message-signature"
    tags: dict[bytes, bytes] | None
    error: str = ""

    def text(self, tag: bytes) -> str:
        """A tag's value as text, folding whitespace removed (``""`` if absent)."""
        value = (self.tags or {}).get(tag, b"")
        return re.sub(rb"\s+", b"", value).decode("ascii", "replace")

    def body_key(self) -> Key | None:
        """Which body hash this signature checks, or None if its tags cannot say."""
        if self.tags is None:
            return None
        default = b"relaxed/relaxed" if self.kind == "arc-message-signature" else b"simple"
        parts = self.tags.get(b"c", default).split(b"/")
        body = (parts[1] if len(parts) == 2 else b"simple").decode("ascii", "replace")
        algorithm = self.tags.get(b"a", b"").decode("ascii", "replace")
        length = self.tags.get(b"l")
        if body not in ("simple", "relaxed") or algorithm not in HASHES or (
                length is not None and _LENGTH.fullmatch(length) is None):
            return None
        canon: Canonicalization = "simple" if body == "simple" else "relaxed"
        return canon, algorithm, None if length is None else int(length)


class MessageReader:
    """Feed it a message in chunks (``feed``, then ``close``); it keeps the header
    section (up to ``max_header`` octets) and hashes the body for the signatures found
    there, so that a message of any size costs bounded memory to verify."""

    def __init__(self, max_header: int = MAX_HEADER) -> None:
        self.max_header = max_header
        #: The header section, blank line excluded, once known (None before, and if
        #: it was longer than ``max_header``).
        self.header: bytes | None = None
        self.too_large = False
        self.closed = False
        self.signatures: list[Signature] = []  # DKIM-Signature fields, topmost first
        self.arc_signatures: list[Signature] = []
        self.fields: list[tuple[bytes, bytes]] = []  # (name, value) in order
        self._head = bytearray()
        self._body: BodyHashes | None = None

    @classmethod
    def of(cls, message: bytes | MessageReader) -> MessageReader:
        """A closed reader of a whole message (or the reader itself)."""
        if isinstance(message, MessageReader):
            return message
        reader = cls()
        reader.feed(message)
        reader.close()
        return reader

    @property
    def header_complete(self) -> bool:
        """The header section has been read (the checks' lookups can start)."""
        return self.header is not None

    def feed(self, data: bytes) -> None:
        """The next chunk of the message, cut anywhere."""
        if self.closed:
            raise ValueError("the message has ended")
        if self._body is not None:
            self._body.feed(data)
            return
        if self.too_large:
            return
        start = max(len(self._head) - 2, 0)
        self._head += data
        found = _BLANK_LINE.search(self._head, start)
        end = found.start() + 1 if found is not None else 0  # (the last line's LF kept)
        if start == 0 and (first := _LEADING_BLANK.match(self._head)) is not None:
            found, end = first, 0  # no header fields at all
        if found is None or end > self.max_header:
            if found is not None or len(self._head) > self.max_header:
                self.too_large = True
                self._head = bytearray()
            return
        rest = bytes(self._head[found.end():])
        self._header_ends(bytes(self._head[:end]))
        assert self._body is not None
        self._body.feed(rest)

    def close(self) -> None:
        """The message has ended."""
        if self.closed:
            return
        if self._body is None and not self.too_large:  # all header, no body
            self._header_ends(bytes(self._head))
        if self._body is not None:
            self._body.end()
        self.closed = True

    def body_hash(self, signature_tags: dict[bytes, bytes], kind: str) -> bytes | None:
        """The body hash a signature's tags ask for, once the message has ended."""
        key = Signature(kind, signature_tags).body_key()
        return None if key is None or self._body is None else self._body.digest(key)

    def author_domains(self) -> tuple[list[str], str]:
        """The RFC 5322.From domains (lower case), or [] and why there are none."""
        values = [value for name, value in self.fields if name.lower() == b"from"]
        if self.too_large:
            return [], f"header section larger than {self.max_header} octets"
        if not values:
            return [], "no From header field"
        if len(values) > 1:
            return [], "several From header fields"
        text = values[0].decode("utf-8", "surrogateescape").replace("\r\n", "")
        domains = []
        for _name, address in email.utils.getaddresses([text]):
            domain = address.rpartition("@")[2].strip().rstrip(".").lower()
            if "@" not in address or not domain:
                return [], "a From address without a domain"
            domains.append(domain)
        if not domains:
            return [], "no address in From"
        return sorted(set(domains)), ""

    def _header_ends(self, header: bytes) -> None:
        self.header = header
        self._head = bytearray()
        self.fields = _fields(header)
        for name, value in self.fields:
            kind = name.lower().decode("ascii", "replace")
            if kind == "dkim-signature" and len(self.signatures) < MAX_SIGNATURES:
                self.signatures.append(_signature(kind, value))
            elif kind == "arc-message-signature" and len(
                    self.arc_signatures) < MAX_ARC_SETS:
                self.arc_signatures.append(_signature(kind, value))
        keys = {key for s in self.signatures + self.arc_signatures
                if (key := s.body_key()) is not None}
        self._body = BodyHashes(keys)


def _signature(kind: str, value: bytes) -> Signature:
    try:
        return Signature(kind, parse_tag_value(value))
    except InvalidTagValueList as exc:
        return Signature(kind, None, f"malformed tag list: {exc}")


def _fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs, as dkimpy splits them (folded lines kept, CRLF ends)."""
    fields: list[list[bytes]] = []
    for line in re.split(rb"\r?\n", header):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line + b"\r\n"
        elif (found := _FIELD.match(line)) is not None:
            fields.append([found.group(1), line[found.end():] + b"\r\n"])
    return [(name, value) for name, value in fields]
