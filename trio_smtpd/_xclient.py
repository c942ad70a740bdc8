"""XCLIENT (Postfix's XCLIENT_README): a trusted proxy says who the real client is.

nginx's mail proxy and Postfix's postscreen put it in front of the session they pass on:
``XCLIENT ADDR=192.0.2.7 NAME=client.example.org LOGIN=alice``. Values are xtext
(RFC 3461 4), ``[UNAVAILABLE]`` (or, for NAME and ADDR, ``[TEMPUNAVAIL]``) when the proxy
does not know. ``parse_xclient`` is the engine's half (sans-I/O: syntax and values);
``apply_xclient`` the session's (the ``SessionInfo`` the application sees), in the way the
PROXY protocol's header updates it.
"""

from __future__ import annotations

import ipaddress
import re

from ._info import SessionInfo
from ._networks import is_port
from ._replies import Reply, ReplyError

__all__ = ["ATTRIBUTES", "apply_xclient", "parse_xclient"]

#: What the EHLO keyword lists, in Postfix's order.
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")
UNAVAILABLE = "[UNAVAILABLE]"
_UNKNOWN = (UNAVAILABLE, "[TEMPUNAVAIL]")
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_TEXT = re.compile(r"[\x21-\x7e\u0080-\U0010ffff]{1,255}")
_LOGIN = re.compile(r"[\x20-\x7e\u0080-\U0010ffff]{1,255}")  # (a SASL name may have spaces)


def _syntax(text: str) -> ReplyError:
    return ReplyError(Reply(501, text, "5.5.4"))


def parse_xclient(argument: str) -> dict[str, str]:
    """The attributes of an XCLIENT command line, checked; ``ReplyError`` (501) if not."""
    if not argument.strip(" "):
        raise _syntax("Syntax: XCLIENT attribute=value...")
    attributes: dict[str, str] = {}
    for item in argument.split():
        name, equals, raw = item.partition("=")
        name = name.upper()
        if not equals or name not in ATTRIBUTES:
            raise _syntax(f"Bad XCLIENT attribute name: {name[:40]}")
        value = _xtext(raw)
        checked = _check(name, value)
        if checked is None:
            raise _syntax(f"Bad XCLIENT {name} syntax: {value[:60]}")
        attributes[name] = checked
    return attributes


def _xtext(raw: str) -> str:
    if "+" not in raw:
        return raw
    decoded = _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), raw)
    if "+" in _XTEXT.sub("", raw):
        raise _syntax("Bad XCLIENT xtext encoding")
    return decoded


def _check(name: str, value: str) -> str | None:
    """The value, normalised (an address without ``IPV6:``), or None if it is wrong."""
    if value in _UNKNOWN:
        return UNAVAILABLE if name not in ("NAME", "ADDR", "DESTADDR") else value
    if name in ("ADDR", "DESTADDR"):
        prefixed = value[:5].upper() == "IPV6:"
        try:
            address = ipaddress.ip_address(value[5:] if prefixed else value)
        except ValueError:
            return None
        if (address.version == 6) != prefixed:
            return None  # an IPv6 address comes with its IPV6: prefix, and only it
        return str(address)
    if name in ("PORT", "DESTPORT"):
        return value if is_port(value) else None
    if name == "PROTO":
        return value.upper() if value.upper() in ("SMTP", "ESMTP") else None
    if name == "NAME":
        return value if _NAME.fullmatch(value) else None
    return value if (_LOGIN if name == "LOGIN" else _TEXT).fullmatch(value) else None


def apply_xclient(info: SessionInfo, attributes: dict[str, str]) -> None:
    """Update ``info`` with what a trusted proxy's XCLIENT said about its client."""
    if info.proxy is None:
        info.proxy = info.peer  # the connection's own peer: the proxy
    info.xclient = dict(attributes)
    info.peer = _endpoint(info.peer, attributes.get("ADDR"), attributes.get("PORT"))
    info.local = _endpoint(info.local, attributes.get("DESTADDR"),
                           attributes.get("DESTPORT"))
    login = attributes.get("LOGIN")
    info.authenticated_as = None if login in (None, UNAVAILABLE) else login
    info.helo = None  # (the client says EHLO again: XCLIENT starts the session over)


def _endpoint(current: tuple[str, int] | None, address: str | None,
              port: str | None) -> tuple[str, int] | None:
    if address in _UNKNOWN:
        return None
    host = address or (current[0] if current else None)
    if host is None:
        return None
    if port is None:
        number = current[1] if current and address is None else 0
    else:
        number = 0 if port == UNAVAILABLE else int(port)
    return host, number
