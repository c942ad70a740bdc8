"""What a client said, made safe to write down: in a trace header, a log line, a sidecar.

Everything a client sends is hostile. The protocol engine refuses ASCII control
characters in commands, but RFC 6531 lets an SMTPUTF8 address (and a HELO name) carry
any Unicode, including the line and paragraph separators (U+2028, U+2029), NEL (U+0085
arrives escaped, as 8-bit HELO bytes do) and the bidirectional and other format controls
(U+202E...) that split a line for some readers or disguise it in a terminal.

* A HELO name goes into the ``Received:`` header only in Postfix's safe form: every
  character that is not printable, and each of `` <>()\\";@``, becomes ``?`` (Postfix's
  ``printable()`` and ``neuter()``), so no client can add a comment, a ``by`` clause or a
  ``for`` clause of its own: ``EHLO foo bar()baz;`` is ``from foo?bar??baz?``. Non-ASCII
  is kept only when the message is SMTPUTF8 (its header may then be UTF-8, RFC 6532).
* An address in a header keeps its form (quoted local part and all) but its controls,
  Unicode line and format characters are escaped as ``\\uXXXX`` (the transcript's
  escapes).
* A JSON line (log or sidecar) keeps the exact value but writes those characters as
  ``\\uXXXX`` escapes, as ``ensure_ascii`` would, while leaving other non-ASCII readable:
  a line-based reader never sees a line end inside a value.

What is unsafe goes by general category (``trio_smtpd._unicode``: controls, format
characters, line and paragraph separators, surrogates, private use, unassigned), shared
with the library's ``Transcript``: a hand list missed the soft hyphen, U+206A-206F and the
tag characters (issue 16).
"""

from __future__ import annotations

from .._transcript import escape
from .._unicode import escape_unsafe, not_in_name

__all__ = ["escape", "header_address", "json_safe", "safe_name"]

# Postfix's NEUTER_CHARACTERS (smtpd.c), plus the backslash of an escaped 8-bit byte.
_NEUTER = frozenset(' <>()\\";@')


def safe_name(name: str, *, utf8: bool = False) -> str:
    """A HELO (or DNS) name as Postfix writes it in ``Received:``: one token, nothing
    that could close the clause it sits in."""
    return "".join(c if _keeps(c, utf8) else "?" for c in name)


def _keeps(c: str, utf8: bool) -> bool:
    if c in _NEUTER:
        return False
    if c.isascii():
        return "!" <= c <= "~"
    # isprintable() is False for every unsafe category; not_in_name() adds what no name
    # may hold though it can be printed (variation selectors, Hangul fillers...).
    return utf8 and c.isprintable() and not not_in_name(c)


def header_address(address: str) -> str:
    """An address for a trace header: as the client wrote it, controls escaped."""
    return escape(address)


def json_safe(encoded: str) -> str:
    """JSON text (``ensure_ascii=False``) with every unsafe character as a ``\\u``
    escape. Such characters can only be inside its strings, where the escape is valid."""
    # The usual line is ASCII (isascii() reads a flag, it does not scan), and the JSON
    # encoder has escaped every ASCII control but DEL: then no look at each character.
    if encoded.isascii() and "\x7f" not in encoded:
        return encoded
    return escape_unsafe(encoded, _json_escape)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    # JSON has no escape beyond the BMP: a surrogate pair, as ensure_ascii writes it.
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
