"""DKIM body hashes computed as the body streams past, in bounded memory.

dkimpy canonicalizes and hashes a body it holds whole; a 100 MB message would cost
several copies of itself. Here the two body canonicalizations of RFC 6376 3.4.3 and
3.4.4 run chunk by chunk, each keeping at most a CR, one space and a count of pending
empty lines, and feed one hash per (canonicalization, algorithm, ``l=``) that the
message's signatures ask for. The results equal dkimpy's on the same bytes (a property
test says so): line ends are read as dkimpy reads them (``\\r?\\n``, i.e. a bare LF
counts as CRLF).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

__all__ = ["HASHES", "BodyHashes", "Canonicalization"]

Canonicalization = Literal["simple", "relaxed"]
#: The a= tags' hashes (RFC 6376 3.3, RFC 8463).
HASHES: dict[str, Callable[[], Any]] = {"rsa-sha256": hashlib.sha256,
                                        "rsa-sha1": hashlib.sha1,
                                        "ed25519-sha256": hashlib.sha256}
_BARE_LF = re.compile(rb"\r?\n")
_WSP_BEFORE_CRLF = re.compile(rb"[\t ]+\r\n")
# Runs of WSP become one space; a lone space is left as it is (most of them: cheaper).
_WSP = re.compile(rb"\t[\t ]*| [\t ]+")
_PIECE = 1 << 16  # pending empty lines are written out at most this much at a time


class _LineEnds:
    """``\\r?\\n`` -> CRLF, holding back a final CR that the next chunk may pair."""

    def __init__(self) -> None:
        self._cr = b""

    def feed(self, data: bytes) -> bytes:
        data = self._cr + data
        self._cr = b""
        if data.endswith(b"\r"):
            data, self._cr = data[:-1], b"\r"
        if data.count(b"\n") == data.count(b"\r\n"):  # (two C scans beat a regex)
            return data
        return _BARE_LF.sub(b"\r\n", data)

    def end(self) -> bytes:
        cr, self._cr = self._cr, b""
        return cr


class _Canonicalizer:
    """One body canonicalization, streamed: ``feed`` and ``end`` yield its output."""

    def __init__(self, kind: Canonicalization) -> None:
        self.relaxed = kind == "relaxed"
        self._space = b""  # relaxed: a run of WSP not yet known to end a line
        self._empty_lines = 0  # CRLFs held back: they count only if text follows
        self._wrote = False  # relaxed: anything but empty lines so far

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.relaxed:
            data = self._space + data
            stripped = data.rstrip(b" \t")
            # Any run of WSP is one space, or nothing before CRLF: keep one at most.
            self._space = b" " if len(stripped) != len(data) else b""
            if b" \r\n" in stripped or b"\t\r\n" in stripped:
                stripped = _WSP_BEFORE_CRLF.sub(b"\r\n", stripped)
            data = _WSP.sub(b" ", stripped)
        end = len(data)
        while end >= 2 and data.endswith(b"\r\n", 0, end):  # (no copy per CRLF)
            end -= 2
        if end == 0:
            self._empty_lines += len(data) // 2
            return
        yield from self._held_lines()
        yield data[:end]
        self._wrote = True
        self._empty_lines = (len(data) - end) // 2

    def end(self) -> Iterator[bytes]:
        if self._space:
            yield from self._held_lines()
            yield b" "
            self._wrote = True
        # simple: exactly one CRLF ends the body (an empty body is CRLF); relaxed: the
        # same, except that a body of nothing but empty lines is empty.
        if not self.relaxed or self._wrote:
            yield b"\r\n"

    def _held_lines(self) -> Iterator[bytes]:
        while self._empty_lines:
            count = min(self._empty_lines, _PIECE // 2)
            self._empty_lines -= count
            yield b"\r\n" * count


class _Hash:
    def __init__(self, algorithm: str, limit: int | None) -> None:
        self._hash = HASHES[algorithm]()
        self._left = limit  # l=: only this many octets of the canonical body count

    def update(self, data: bytes) -> None:
        if self._left is not None:
            data = data[:self._left]
            self._left -= len(data)
        self._hash.update(data)

    def digest(self) -> bytes:
        digest: bytes = self._hash.digest()
        return digest


Key = tuple[Canonicalization, str, int | None]


class BodyHashes:
    """The body hashes that a message's signatures need, computed as it streams."""

    def __init__(self, keys: set[Key]) -> None:
        self._line_ends = _LineEnds()
        self._canon = {kind: _Canonicalizer(kind) for kind in {k[0] for k in keys}}
        self._hashes = {key: _Hash(key[1], key[2]) for key in keys}
        self._by_canon = {kind: [h for k, h in self._hashes.items() if k[0] == kind]
                          for kind in self._canon}
        self._ended = False

    def feed(self, data: bytes) -> None:
        if self._hashes:
            self._write(self._line_ends.feed(data), end=False)

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._write(self._line_ends.end(), end=True)

    def digest(self, key: Key) -> bytes | None:
        """The hash for one key, once the body has ended (None: not computed)."""
        found = self._hashes.get(key)
        return found.digest() if found is not None and self._ended else None

    def _write(self, data: bytes, *, end: bool) -> None:
        for kind, canon in self._canon.items():
            pieces = list(canon.feed(data)) if data else []
            if end:
                pieces += canon.end()
            for piece in pieces:
                for hashed in self._by_canon[kind]:
                    hashed.update(piece)
