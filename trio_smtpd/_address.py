"""RFC 5321 paths and mailboxes (4.1.2, 4.1.3, 4.5.3.1), with RFC 6531 SMTPUTF8.

Sans-I/O: this module imports nothing from trio or socket.

A path is matched in one go by a regular expression composed from the ABNF rules below
(the fast path, run for every MAIL and RCPT). What a regular expression expresses badly
(length limits, the inside of address literals, U-label validity) is checked on the match
afterwards. Only when the expression fails does a rule-by-rule scan run, to tell the
client precisely what is wrong.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import NoReturn

from ._replies import ReplyError
from ._unicode import first_not_in_name

__all__ = ["Address", "parse_forward_path", "parse_mailbox", "parse_reverse_path"]

# RFC 6532 UTF8-non-ascii, less the C1 controls (U+0080-U+009F) and lone surrogates (what a
# "surrogateescape" decoder makes of invalid UTF-8). Used inside character classes.
_NON_ASCII = "\u00a0-\ud7ff\ue000-\U0010ffff"

_MAX_LOCAL, _MAX_DOMAIN, _MAX_LABEL, _MAX_PATH = 64, 255, 63, 256  # RFC 5321 4.5.3.1


class _Grammar:
    """The ABNF compiled for one repertoire: ``u`` is "" (ASCII) or ``_NON_ASCII`` (RFC 6531)."""

    def __init__(self, u: str) -> None:
        atext = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~" + u + "]"  # RFC 5322 3.2.3
        self.atom = re.compile(atext + "+")
        dot_string = rf"{atext}+(?:\.{atext}+)*"
        # qtextSMTP is printable ASCII but '"' and '\'; quoted-pairSMTP escapes printable ASCII.
        qcontent = r"(?:[\x20\x21\x23-\x5b\x5d-\x7e" + u + r"]|\\[\x20-\x7e])*"
        self.qcontent = re.compile(qcontent)
        quoted_string = f'"{qcontent}"'
        # sub-domain = Let-dig [Ldh-str]: no hyphen first or last. RFC 6531 adds U-labels.
        let_dig = "[A-Za-z0-9" + u + "]"
        ldh = r"[A-Za-z0-9\-" + u + "]"
        self.label = re.compile(ldh + "+")  # loose, for diagnosis
        sub_domain = f"{let_dig}(?:{ldh}*{let_dig})?"
        domain = rf"{sub_domain}(?:\.{sub_domain})*"
        # dcontent is printable ASCII but '[', '\' and ']'; what is inside is checked later.
        self.dcontent = re.compile(r"[\x21-\x5a\x5e-\x7e]*")
        literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
        mailbox = f"(?P<local>{dot_string}|{quoted_string})@(?P<domain>{domain}|{literal})"
        self.mailbox = re.compile(mailbox)
        # Path = "<" [ A-d-l ":" ] Mailbox ">"
        self.path = re.compile(f"<(?:(?P<route>@{domain}(?:,@{domain})*):)?{mailbox}>")


_ASCII = _Grammar("")
_UTF8 = _Grammar(_NON_ASCII)

_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_LDH_STR = re.compile(r"[A-Za-z0-9\-]*[A-Za-z0-9]")  # Standardized-tag
_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_HEX16 = re.compile(r"[0-9A-Fa-f]{1,4}")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox as the client wrote it (source routes dropped).

    ``local_part`` keeps any quotes and backslashes; ``domain`` keeps the brackets of an
    address literal and is "" only for the special recipient ``<Postmaster>``.
    """

    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part

    @property
    def is_ascii(self) -> bool:
        """False when the address can only be used in an SMTPUTF8 transaction."""
        return self.local_part.isascii() and self.domain.isascii()

    @property
    def local_part_unquoted(self) -> str:
        """The local part with the quotes of a Quoted-string removed and quoted-pairs undone."""
        lp = self.local_part
        if len(lp) >= 2 and lp[0] == lp[-1] == '"':
            return _QUOTED_PAIR.sub(r"\1", lp[1:-1])
        return lp


# (enhanced status code, what the reply calls the thing being parsed)
_Kind = tuple[str, str]
_SENDER: _Kind = ("5.1.7", "sender address")  # RFC 3463: bad sender's mailbox syntax
_RECIPIENT: _Kind = ("5.1.3", "recipient address")  # bad destination mailbox syntax
_MAILBOX: _Kind = ("5.1.3", "mailbox")


def _syntax(kind: _Kind, problem: str) -> ReplyError:
    return ReplyError.of(501, f"Syntax error in {kind[1]}: {problem}", kind[0])


def _needs_utf8(kind: _Kind) -> ReplyError:
    return ReplyError.of(553, f"Non-ASCII {kind[1]} requires SMTPUTF8", "5.6.7")


def parse_reverse_path(text: str, *, utf8: bool) -> tuple[Address | None, str]:
    """Parse the argument of ``MAIL FROM:``; ``None`` is the null path ``<>``.

    Returns the address and the rest of ``text`` after ">" (empty, or starting with a space).
    """
    if text.startswith("<>"):
        return None, _rest(text, 2, _SENDER)
    return _parse_path(text, utf8, _SENDER)


def parse_forward_path(text: str, *, utf8: bool) -> tuple[Address, str]:
    """Parse the argument of ``RCPT TO:``, including the special ``<Postmaster>``."""
    head = text[:12]
    if head.isascii() and head.lower() == "<postmaster>":  # RFC 5321 4.1.1.3, any case
        return Address(head[1:11], ""), _rest(text, 12, _RECIPIENT)
    return _parse_path(text, utf8, _RECIPIENT)


def parse_mailbox(text: str, *, utf8: bool) -> Address:
    """Parse a bare Mailbox (all of ``text``), as in the AUTH= and ORCPT parameters."""
    m = (_UTF8 if utf8 else _ASCII).mailbox.fullmatch(text)
    if m is None:
        _diagnose(text, _MAILBOX, utf8, bracketed=False)
    _check(_MAILBOX, m["local"], m["domain"], None)
    return Address(m["local"], m["domain"])


def _parse_path(text: str, utf8: bool, kind: _Kind) -> tuple[Address, str]:
    m = (_UTF8 if utf8 else _ASCII).path.match(text)
    if m is None:
        _diagnose(text, kind, utf8, bracketed=True)
    _check(kind, m["local"], m["domain"], m["route"])
    if _octets(m[0]) > _MAX_PATH:
        raise _syntax(kind, f"path longer than {_MAX_PATH} octets")
    # RFC 5321 C: a source route is accepted and ignored.
    return Address(m["local"], m["domain"]), _rest(text, m.end(), kind)


def _rest(text: str, end: int, kind: _Kind) -> str:
    rest = text[end:]
    if rest and rest[0] != " ":
        raise _syntax(kind, f"unexpected {rest[0]!r} after '>' (parameters follow a space)")
    return rest


def _octets(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


# --- Checks on a syntactically valid path --------------------------------------------


def _check(kind: _Kind, local: str, domain: str, route: str | None) -> None:
    if _octets(local) > _MAX_LOCAL:
        raise _syntax(kind, f"local part longer than {_MAX_LOCAL} octets")
    if domain.startswith("["):
        _check_literal(kind, domain[1:-1])
    else:
        _check_domain(kind, domain, "domain")
    if route:
        for hop in route.split(","):
            _check_domain(kind, hop[1:], "source route domain")


def _check_domain(kind: _Kind, domain: str, where: str) -> None:
    if domain.isascii() and len(domain) <= _MAX_LABEL:
        return  # the grammar matched it, and no label can be too long (the usual case)
    if _octets(domain) > _MAX_DOMAIN:
        raise _syntax(kind, f"{where} longer than {_MAX_DOMAIN} octets")
    for label in domain.split("."):
        if label.isascii():
            if len(label) > _MAX_LABEL:
                raise _syntax(kind, f"{where} label longer than {_MAX_LABEL} octets")
        elif (char := first_not_in_name(label)) is not None:
            raise _syntax(kind, f"{where} label contains {_named(char)}, which IDNA2008 "
                                "does not allow")
        elif not _is_u_label(label):
            raise _syntax(kind, f"{where} label {label!r} is not a valid IDNA label")


def _named(char: str) -> str:
    # Named, not echoed: the character is invisible, or worse, in the client's terminal.
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"


def _is_u_label(label: str) -> bool:
    # The stdlib codec is IDNA2003, so this is a sanity check rather than IDNA2008 validation:
    # the label must convert to one LDH label of at most 63 octets. The codec also splits on
    # U+3002 and other dot look-alikes, which therefore fail here rather than hide a label.
    # What it maps to nothing (the soft hyphen...) was refused before (first_not_in_name).
    try:
        a_label = label.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return _LDH_LABEL.fullmatch(a_label) is not None


def _check_literal(kind: _Kind, inner: str) -> None:
    if _is_ipv4(inner):
        return
    tag, colon, value = inner.partition(":")
    if colon and tag.lower() == "ipv6":  # ABNF strings are case-insensitive
        if _is_ipv6(value):
            return
        raise _syntax(kind, f"invalid IPv6 address literal [{inner}]")
    if _is_ipv6(inner):
        raise _syntax(kind, f"IPv6 address literal [{inner}] lacks the 'IPv6:' tag")
    if colon and _LDH_STR.fullmatch(tag):
        raise _syntax(kind, f"unsupported address literal tag {tag!r} (only IPv6 is registered)")
    if _IPV4.fullmatch(inner):
        raise _syntax(kind, f"IPv4 address literal [{inner}] has a number over 255")
    raise _syntax(kind, f"invalid address literal [{inner}] (not IPv4 or IPv6)")


def _is_ipv4(s: str) -> bool:
    m = _IPV4.fullmatch(s)  # Snum = 1*3DIGIT, value 0-255
    return m is not None and all(int(n) <= 255 for n in m.groups())


def _is_ipv6(s: str) -> bool:
    """IPv6-full / IPv6-comp / IPv6v4-full / IPv6v4-comp of RFC 5321 4.1.3.

    Stricter than RFC 4291: "::" stands for at least two groups, so at most six others.
    """
    head, compressed, tail = s.partition("::")
    if "::" in tail:
        return False
    left = head.split(":") if head else []
    right = tail.split(":") if tail else []
    last = right if compressed else left
    groups = 0
    if last and "." in last[-1]:  # an IPv4 tail, only ever last, counts as two groups
        if not _is_ipv4(last.pop()):
            return False
        groups = 2
    if not all(_HEX16.fullmatch(g) for g in left + right):
        return False
    groups += len(left) + len(right)
    return groups <= 6 if compressed else groups == 8


# --- Diagnosis of a path the grammar refused -------------------------------------------


class _Bad(Exception):
    """A departure from the grammar found by the diagnosis: where it is, and what."""

    def __init__(self, pos: int, problem: str) -> None:
        super().__init__(problem)
        self.pos = pos
        self.problem = problem


def _diagnose(text: str, kind: _Kind, utf8: bool, *, bracketed: bool) -> NoReturn:
    """Raise the reply for ``text``, which the compiled grammar refused.

    The walk admits UTF-8 even without SMTPUTF8; then non-ASCII up to the first problem
    (or in an otherwise valid path) gets its own 553 reply.
    """
    try:
        end, problem = _walk(text, bracketed), "invalid address"  # unreachable in practice
    except _Bad as bad:
        end, problem = bad.pos, bad.problem
    if not utf8 and not text[: end + 1].isascii():
        raise _needs_utf8(kind)
    raise _syntax(kind, problem)


def _walk(text: str, bracketed: bool) -> int:
    """Follow the grammar rule by rule; return where the path ends or raise ``_Bad``."""
    j = 0
    if bracketed:
        if not text.startswith("<"):
            raise _Bad(0, "address must be enclosed in angle brackets <...>")
        j = 1
        if text.startswith(">", j):
            raise _Bad(j, "the null path <> is only allowed for the sender")
        while text.startswith("@", j):  # A-d-l
            end = _scan_domain(text, j + 1, "source route domain")
            if text.startswith(":", end):
                j = end + 1
                break
            if not text.startswith(",", end):
                if end == len(text) or text[end] == ">":
                    raise _Bad(end, "source route must be followed by ':' and a mailbox")
                raise _bad_char(text, end, "source route domain")
            if not text.startswith("@", end + 1):
                raise _bad_char(text, end + 1, "source route (each hop starts with '@')")
            j = end + 1
    end = _scan_local_part(text, j)
    if not text.startswith("@", end):
        if end == len(text) or (bracketed and text[end] == ">"):
            raise _Bad(end, "missing '@' and domain")
        raise _bad_char(text, end, "local part")
    if text.startswith("[", end + 1):
        end = _scan_literal(text, end + 1)
    else:
        end = _scan_domain(text, end + 1, "domain")
    if bracketed and end == len(text):
        raise _Bad(end, "missing closing '>'")
    if end < len(text) and not (bracketed and text[end] == ">"):
        raise _bad_char(text, end, "domain")
    return end


def _scan_local_part(text: str, j: int) -> int:
    if text.startswith('"', j):
        end = _match_end(_UTF8.qcontent, text, j + 1)
        if end < len(text) and text[end] == '"':
            return end + 1
        if end == len(text) or (text[end] == "\\" and end + 1 == len(text)):
            raise _Bad(end, "unterminated quoted string in local part")
        if text[end] == "\\":
            raise _bad_char(text, end + 1, "quoted-pair (after '\\') in local part")
        raise _bad_char(text, end, "quoted local part")
    k = j
    while True:
        m = _UTF8.atom.match(text, k)
        if m is None:
            ch = text[k : k + 1]
            if ch == ".":
                raise _Bad(k, "local part starts with a dot" if k == j else
                           "local part contains consecutive dots")
            if ch in ("", "@", ">"):
                raise _Bad(k, "empty local part" if k == j else "local part ends with a dot")
            raise _bad_char(text, k, "local part")
        k = m.end()
        if not text.startswith(".", k):
            return k
        k += 1


def _scan_domain(text: str, j: int, where: str) -> int:
    k = j
    while True:
        m = _UTF8.label.match(text, k)
        if m is None:
            ch = text[k : k + 1]
            if ch == ".":
                raise _Bad(k, f"{where} starts with a dot" if k == j else
                           f"{where} contains consecutive dots")
            if ch in ("", ">", ",", ":"):
                raise _Bad(k, f"empty {where}" if k == j else f"{where} ends with a dot")
            raise _bad_char(text, k, where)
        label = m[0]
        if label[0] == "-" or label[-1] == "-":
            raise _Bad(k, f"{where} label {label!r} starts or ends with a hyphen")
        k = m.end()
        if not text.startswith(".", k):
            return k
        k += 1


def _scan_literal(text: str, j: int) -> int:
    end = _match_end(_UTF8.dcontent, text, j + 1)
    if end == len(text):
        raise _Bad(end, "unterminated address literal (missing ']')")
    if text[end] != "]":
        raise _bad_char(text, end, "address literal")
    if end == j + 1:
        raise _Bad(end, "empty address literal []")
    return end + 1


def _match_end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    m = pattern.match(text, pos)
    return pos if m is None else m.end()


def _bad_char(text: str, k: int, where: str) -> _Bad:
    if k >= len(text):
        return _Bad(k, f"unexpected end of {where}")
    ch = text[k]
    code = ord(ch)
    if ch == " ":
        return _Bad(k, f"space in {where} (allowed only inside a quoted string)")
    if code < 0x20 or 0x7F <= code < 0xA0:
        return _Bad(k, f"control character U+{code:04X} in {where}")
    if 0xD800 <= code < 0xE000:
        return _Bad(k, f"invalid UTF-8 in {where}")
    return _Bad(k, f"invalid character {ch!r} in {where}")
