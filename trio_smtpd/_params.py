"""ESMTP parameters of MAIL FROM and RCPT TO.

``split_params`` applies the RFC 5321 4.1.2 grammar. ``parse_mail_params`` and
``parse_rcpt_params`` check each parameter against what the session advertised in EHLO and
return the decoded values. Every failure is a ``ReplyError`` saying what is wrong:

* 501 5.5.4: bad syntax, a malformed value, a value missing or not allowed;
* 555 5.5.4: a parameter not recognised, not offered in this session, or given twice
  (RFC 5321 4.1.1.11 and 4.2.2);
* 552 5.3.4: SIZE over the fixed limit (RFC 1870 6.1).

Syntax errors anywhere in the list are reported first, then each parameter in order. Reply
texts name only validated keywords and never echo values, so nothing a client sends can end
up in a reply line.

Pure functions over ``str``: nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from ._replies import ReplyError

__all__ = [
    "BodyType",
    "EnabledExtensions",
    "MailParams",
    "NotifyType",
    "OriginalRecipient",
    "RcptParams",
    "RetType",
    "parse_mail_params",
    "parse_rcpt_params",
    "split_params",
    "xtext_decode",
    "xtext_encode",
]

BodyType = Literal["7BIT", "8BITMIME", "BINARYMIME"]
RetType = Literal["FULL", "HDRS"]
NotifyType = Literal["SUCCESS", "FAILURE", "DELAY", "NEVER"]


@dataclass(frozen=True, slots=True)
class EnabledExtensions:
    """What this session advertised in EHLO, and so which parameters it accepts."""

    max_message_size: int | None  # SIZE limit in octets; None for no limit
    eightbitmime: bool
    binarymime: bool  # RFC 3030; only offered with CHUNKING
    smtputf8: bool
    dsn: bool  # RFC 3461: RET, ENVID, NOTIFY, ORCPT
    auth: bool  # RFC 4954 5: AUTH= on MAIL
    requiretls: bool  # RFC 8689; only when TLS is active and REQUIRETLS is offered


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: BodyType | None = None
    smtputf8: bool = False
    auth: str | None = None  # "<>" or the xtext-decoded mailbox
    ret: RetType | None = None
    envid: str | None = None  # xtext-decoded
    requiretls: bool = False


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    addr_type: str  # as written ("rfc822", "utf-8", ...); compare case-insensitively
    address: str  # decoded


@dataclass(frozen=True, slots=True)
class RcptParams:
    notify: frozenset[NotifyType] | None = None
    orcpt: OriginalRecipient | None = None


# ---------------------------------------------------------------- grammar

# RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii (RFC 6531 3.3). Lone surrogates
# are octets that were not UTF-8 (surrogateescape), so they are not UTF8-non-ascii.
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\x80-\ud7ff\ue000-\U0010ffff]+")
# RFC 1870: size-value = 1*20DIGIT ([0-9], not \d, which matches any Unicode digit).
_SIZE = re.compile(r"[0-9]{1,20}")
# RFC 3461 4: xchar = "!".."~" except "+" and "="; hexchar = "+" 2(upper-case HEXDIG).
_XCHARS = frozenset(map(chr, range(0x21, 0x7F))) - {"+", "="}
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(rb"\+([0-9A-F]{2})")
# RFC 3461 4.2: addr-type = atom (RFC 822: no specials, SPACE or CTLs).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
# RFC 3461 4.2 and 4.4: decoded ORCPT addresses and ENVIDs are printable US-ASCII; they are
# copied into DSN header fields.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# RFC 6533 3: utf-8-addr-xtext / utf-8-addr-unitext = 1*(QCHAR / EmbeddedUnicodeChar), with
# raw UTF-8 (QUCHAR) in the unitext form. QCHAR is printable ASCII but "\", "+" and "=".
# ABNF strings are case-insensitive, so HEXPOINT may be written in lower case.
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
_UTF8_ADDR = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e\x80-\ud7ff\ue000-\U0010ffff]"
    r"|\\x\{[0-9A-Fa-f]{2,6}\})+"
)
_EMBEDDED_UNICODE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
# C0, DEL and C1 controls: never part of an address.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 5321 4.1.2 Mailbox, loosely, with UTF-8 allowed (RFC 6531). AUTH= is informational
# (RFC 4954 5), so this keeps out garbage rather than enforcing every rule.
_AUTH_MAILBOX = re.compile(
    r"""
    (?: [^\x00-\x20\x7f-\x9f"()<>\[\]\\,;:@.]+ (?:\.[^\x00-\x20\x7f-\x9f"()<>\[\]\\,;:@.]+)*
      | "(?:[^\x00-\x1f\x7f-\x9f"\\]|\\[\x20-\x7e])*"
    )
    @
    (?: [^\x00-\x20\x7f-\x9f"()<>\[\]\\,;:@]+ | \[[^\x00-\x20\x7f-\x9f\[\]\\]+\] )
    """,
    re.VERBOSE,
)

_BODY: dict[str, BodyType] = {body: body for body in get_args(BodyType)}
_RET: dict[str, RetType] = {ret: ret for ret in get_args(RetType)}
_NOTIFY: dict[str, NotifyType] = {word: word for word in get_args(NotifyType)}
_ENVID_MAX = 100  # RFC 3461 4.4


def _syntax(text: str) -> ReplyError:
    return ReplyError.of(501, text, "5.5.4")


def _malformed(keyword: str) -> ReplyError:
    return _syntax(f"Malformed {keyword} value")


def _unsupported(text: str) -> ReplyError:
    return ReplyError.of(555, text, "5.5.4")


def _upper_ascii(value: str) -> str:
    # str.upper() maps some non-ASCII letters to ASCII (dotless i to "I", long s to "S"),
    # which would let "7b\u0131t" pass as 7BIT.
    return value.upper() if value.isascii() else value


# ---------------------------------------------------------------- xtext


def _xtext_or_none(value: str) -> str | None:
    """RFC 3461 xtext decoded as UTF-8, or None if it is not xtext."""
    if not _XTEXT.fullmatch(value):
        return None
    octets = _HEXCHAR.sub(lambda m: bytes([int(m[1], 16)]), value.encode("ascii"))
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return None


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext; the octets must be UTF-8. Malformed input is a 501."""
    decoded = _xtext_or_none(value)
    if decoded is None:
        raise _syntax("Malformed xtext")
    return decoded


def xtext_encode(value: str) -> str:
    """Encode as RFC 3461 xtext: "+" and hex for each UTF-8 octet that is not an xchar."""
    return "".join(
        char if char in _XCHARS else "".join(f"+{octet:02X}" for octet in char.encode("utf-8"))
        for char in value
    )


def _embedded_unicode(match: re.Match[str]) -> str:
    digits = match[1]
    point = int(digits, 16)
    # HEXPOINT: exactly two digits below U+0100, otherwise no leading zero; a scalar value
    # (no surrogates) that QCHAR cannot carry: non-ASCII, or an ASCII control, SP, "\", "+", "=".
    canonical = len(digits) == 2 if point < 0x100 else digits[0] != "0"
    scalar = 0 < point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF
    if not (canonical and scalar) or (point < 0x80 and _QCHAR.fullmatch(chr(point))):
        raise _malformed("ORCPT")
    return chr(point)


def _utf8_addr_decode(value: str, unitext: bool) -> str:
    """RFC 6533 3: decode utf-8-addr-xtext, or utf-8-addr-unitext when ``unitext``."""
    if not _UTF8_ADDR.fullmatch(value):
        raise _malformed("ORCPT")
    if not unitext and not value.isascii():
        # The unitext form is for sessions that offered SMTPUTF8 (RFC 6533 3).
        raise _syntax("Non-ASCII ORCPT value needs SMTPUTF8")
    address = _EMBEDDED_UNICODE.sub(_embedded_unicode, value)
    if _CONTROL.search(address):
        raise _malformed("ORCPT")
    return address


# ---------------------------------------------------------------- parameter list


def split_params(text: str) -> list[tuple[str, str | None]]:
    """Split ``esmtp-param *(SP esmtp-param)`` into (upper-cased keyword, value or None).

    Extra spaces between, before and after parameters are tolerated.
    """
    params: list[tuple[str, str | None]] = []
    for token in text.split(" "):
        if not token:
            continue
        keyword, equals, value = token.partition("=")
        if not _KEYWORD.fullmatch(keyword):
            raise _syntax("Malformed parameter keyword")
        keyword = keyword.upper()
        if equals and not _VALUE.fullmatch(value):
            raise _malformed(keyword)
        params.append((keyword, value if equals else None))
    return params


def _always(ext: EnabledExtensions) -> bool:
    return True


# Keyword -> whether this session offered it. SIZE and BODY are always accepted (BODY
# values are checked one by one); anything absent here is not recognised on that command.
_Offered = Callable[[EnabledExtensions], bool]
_MAIL_KEYWORDS: Mapping[str, _Offered] = {
    "SIZE": _always,
    "BODY": _always,
    "SMTPUTF8": lambda ext: ext.smtputf8,
    "AUTH": lambda ext: ext.auth,
    "RET": lambda ext: ext.dsn,
    "ENVID": lambda ext: ext.dsn,
    "REQUIRETLS": lambda ext: ext.requiretls,
}
_RCPT_KEYWORDS: Mapping[str, _Offered] = {
    "NOTIFY": lambda ext: ext.dsn,
    "ORCPT": lambda ext: ext.dsn,
}


def _checked(
    text: str, ext: EnabledExtensions, keywords: Mapping[str, _Offered]
) -> Iterator[tuple[str, str | None]]:
    """Yield the parameters, each known, offered and given once (else 555)."""
    seen: set[str] = set()
    for keyword, value in split_params(text):
        offered = keywords.get(keyword)
        if offered is None:
            raise _unsupported(f"Unrecognized parameter {keyword}")
        if keyword in seen:
            raise _unsupported(f"Parameter {keyword} given twice")
        if not offered(ext):
            raise _unsupported(f"Parameter {keyword} not offered")
        seen.add(keyword)
        yield keyword, value


def _required(keyword: str, value: str | None) -> str:
    if value is None:
        raise _syntax(f"{keyword} requires a value")
    return value


def _flag(keyword: str, value: str | None) -> Literal[True]:
    if value is not None:
        raise _syntax(f"{keyword} takes no value")
    return True


# ---------------------------------------------------------------- MAIL FROM parameters


def _size(value: str, ext: EnabledExtensions) -> int:
    if not _SIZE.fullmatch(value):
        raise _malformed("SIZE")
    size = int(value)
    limit = ext.max_message_size
    if limit is not None and size > limit:
        raise ReplyError.of(552, "Message size exceeds fixed maximum message size", "5.3.4")
    return size


def _body(value: str, ext: EnabledExtensions) -> BodyType:
    body = _BODY.get(_upper_ascii(value))
    if body is None:
        raise _malformed("BODY")
    if (body == "8BITMIME" and not ext.eightbitmime) or (
        body == "BINARYMIME" and not ext.binarymime
    ):
        raise _unsupported(f"BODY={body} not offered")
    return body


def _auth(value: str) -> str:
    # RFC 4954 5: xtext of an addr-spec, or "<>" for an unknown submitter (sent by Office 365).
    mailbox = _xtext_or_none(value)
    if mailbox is None or (mailbox != "<>" and not _AUTH_MAILBOX.fullmatch(mailbox)):
        raise _malformed("AUTH")
    return mailbox


def _ret(value: str) -> RetType:
    ret = _RET.get(_upper_ascii(value))
    if ret is None:
        raise _malformed("RET")
    return ret


def _envid(value: str) -> str:
    # RFC 3461 4.4: at most 100 characters (counted as sent, i.e. encoded), and printable
    # US-ASCII once decoded.
    if len(value) > _ENVID_MAX:
        raise _syntax(f"ENVID longer than {_ENVID_MAX} characters")
    envid = _xtext_or_none(value)
    if envid is None or not _PRINTABLE.fullmatch(envid):
        raise _malformed("ENVID")
    return envid


# What most commands carry: no parameters at all (the values are immutable, so shared).
_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()


def parse_mail_params(text: str, ext: EnabledExtensions) -> MailParams:
    """Parse the parameters after MAIL FROM:<path>, as allowed by ``ext``."""
    if not text.strip(" "):
        return _NO_MAIL_PARAMS
    size: int | None = None
    body: BodyType | None = None
    auth: str | None = None
    ret: RetType | None = None
    envid: str | None = None
    smtputf8 = requiretls = False
    for keyword, value in _checked(text, ext, _MAIL_KEYWORDS):
        if keyword == "SIZE":
            size = _size(_required(keyword, value), ext)
        elif keyword == "BODY":
            body = _body(_required(keyword, value), ext)
        elif keyword == "SMTPUTF8":
            smtputf8 = _flag(keyword, value)
        elif keyword == "AUTH":
            auth = _auth(_required(keyword, value))
        elif keyword == "RET":
            ret = _ret(_required(keyword, value))
        elif keyword == "ENVID":
            envid = _envid(_required(keyword, value))
        else:
            requiretls = _flag(keyword, value)
    return MailParams(size=size, body=body, smtputf8=smtputf8, auth=auth, ret=ret,
                      envid=envid, requiretls=requiretls)


# ---------------------------------------------------------------- RCPT TO parameters


def _notify(value: str) -> frozenset[NotifyType]:
    # RFC 3461 4.1: "NEVER" / 1#("SUCCESS" / "FAILURE" / "DELAY")
    notify: set[NotifyType] = set()
    for word in _upper_ascii(value).split(","):
        known = _NOTIFY.get(word)
        if known is None:
            raise _malformed("NOTIFY")
        notify.add(known)
    if "NEVER" in notify and len(notify) > 1:
        raise _syntax("NOTIFY=NEVER cannot be combined with other values")
    return frozenset(notify)


def _orcpt(value: str, ext: EnabledExtensions) -> OriginalRecipient:
    # RFC 3461 4.2: addr-type ";" xtext; RFC 6533 3 for addr-type utf-8.
    addr_type, semicolon, encoded = value.partition(";")
    if not semicolon or not _ATOM.fullmatch(addr_type) or not encoded:
        raise _malformed("ORCPT")
    if addr_type.lower() == "utf-8":
        address = _utf8_addr_decode(encoded, unitext=ext.smtputf8)
    else:
        decoded = _xtext_or_none(encoded)
        if decoded is None or not _PRINTABLE.fullmatch(decoded):
            raise _malformed("ORCPT")
        address = decoded
    return OriginalRecipient(addr_type, address)


def parse_rcpt_params(text: str, ext: EnabledExtensions) -> RcptParams:
    """Parse the parameters after RCPT TO:<path>, as allowed by ``ext``."""
    if not text.strip(" "):
        return _NO_RCPT_PARAMS
    notify: frozenset[NotifyType] | None = None
    orcpt: OriginalRecipient | None = None
    for keyword, value in _checked(text, ext, _RCPT_KEYWORDS):
        if keyword == "NOTIFY":
            notify = _notify(_required(keyword, value))
        else:
            orcpt = _orcpt(_required(keyword, value), ext)
    return RcptParams(notify=notify, orcpt=orcpt)
