"""SMTP replies as values.

A reply is a three-digit code, an optional RFC 3463 enhanced status code and one or
more lines of text. Text is checked for CR and LF when the reply is built, so that no
caller (least of all application code) can smuggle extra protocol lines to the client.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Reply", "ReplyError", "ReplyTextError"]

_CODE = re.compile(r"[2-5][0-5][0-9]")
# RFC 3463: class "." subject "." detail, with class 2, 4 or 5.
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# Printable US-ASCII, space and tab (RFC 5321 textstring), plus UTF-8 for SMTPUTF8 sessions.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# Enhanced codes already found well-formed (replies are made per message, and few codes
# are ever used).
_CHECKED_ENHANCED: set[str] = set()


class ReplyTextError(ValueError):
    """Raised when a reply would carry text that could break the protocol stream."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code``, optional ``enhanced`` status code, and ``lines`` of text."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    # The serialised reply, with and without the enhanced code, made at first use: most
    # replies are module constants sent again and again.
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _wire_plain: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, code: int, text: str | Sequence[str] = "",
                 enhanced: str | None = None) -> None:
        if not isinstance(code, int) or isinstance(code, bool) or not _CODE.fullmatch(
                str(int(code))):
            raise ReplyTextError(f"not an SMTP reply code: {code!r}")
        if enhanced is not None and enhanced not in _CHECKED_ENHANCED:
            if not _ENHANCED.fullmatch(enhanced):
                raise ReplyTextError(f"not an enhanced status code: {enhanced!r}")
            if len(_CHECKED_ENHANCED) < 4096:
                _CHECKED_ENHANCED.add(enhanced)
        if enhanced is not None and int(enhanced[0]) != code // 100:
            raise ReplyTextError(f"enhanced code {enhanced} does not match class of {code}")
        lines = (text,) if isinstance(text, str) else tuple(text)
        if not lines:
            lines = ("",)
        for line in lines:
            if _FORBIDDEN.search(line):
                raise ReplyTextError(f"reply text contains a control character: {line!r}")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "enhanced", enhanced)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "_wire", None)
        object.__setattr__(self, "_wire_plain", None)

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """4xx: the client should try again later."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: the client should not try again."""
        return self.code >= 500

    @property
    def text(self) -> str:
        """All text lines joined by a space (for logs)."""
        return " ".join(self.lines)

    def to_bytes(self, *, enhanced_codes: bool = True) -> bytes:
        """Serialise as RFC 5321 4.2 reply lines; ``-`` marks all but the last line."""
        wire = self._wire if enhanced_codes else self._wire_plain
        if wire is None:
            wire = self._serialise(enhanced_codes)
            object.__setattr__(self, "_wire" if enhanced_codes else "_wire_plain", wire)
        return wire

    def _serialise(self, enhanced_codes: bool) -> bytes:
        out = []
        last = len(self.lines) - 1
        for index, line in enumerate(self.lines):
            sep = " " if index == last else "-"
            words = [w for w in (self.enhanced if enhanced_codes else None, line) if w]
            out.append(f"{self.code}{sep}{' '.join(words)}\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        enhanced = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {enhanced}{self.text}".rstrip()


class ReplyError(Exception):
    """An error that the protocol answers with a specific reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply

    @classmethod
    def of(cls, code: int, text: str | Sequence[str] = "",
           enhanced: str | None = None) -> ReplyError:
        """The error for ``Reply(code, text, enhanced)`` (the same argument order)."""
        return cls(Reply(code, text, enhanced))
