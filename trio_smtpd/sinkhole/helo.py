"""What a HELO/EHLO greeting says about the client: sinksmtp's ``helo-has`` attributes.

No DNS: the name is judged by its form and against the connection's two addresses.

* ``helo`` / ``ehlo``: the command used (LMTP's LHLO counts as ``ehlo``);
* ``none``: no name (our engine answers 501 to that before any rule sees it, as
  sinksmtp does, so this never holds in practice);
* ``nodots``: neither a dot nor a colon in the name (``EHLO fred``);
* ``bareip``: a bare IP address (``EHLO 192.0.2.1``);
* ``properip``: an address literal (``EHLO [192.0.2.1]``, ``[IPv6:2001:db8::1]``);
* ``myip`` / ``remip`` / ``otherip``: that address (bare or literal) is ours, the
  client's own, or another;
* ``bogus``: neither a host name (RFC 5321 letters, digits and hyphens, or U-labels)
  nor an IP address nor an address literal: ``EHLO .``, ``EHLO my_pc``, ``EHLO [x]``,
  a name holding a character no name may hold (``EHLO mx.exa\u00admple.com``).
"""

from __future__ import annotations

import ipaddress

from .dnsfacts import dbl_name

__all__ = ["HELO_ATTRIBUTES", "helo_attributes"]

HELO_ATTRIBUTES = ("none", "helo", "ehlo", "nodots", "bareip", "properip", "myip", "remip",
                   "otherip", "bogus")

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def helo_attributes(name: str | None, verb: str | None, remote: str | None,
                    local: str | None) -> frozenset[str]:
    attributes = {"helo" if verb == "HELO" else "ehlo"} if verb else set()
    if not name:
        return frozenset(attributes | {"none", "nodots"})
    if name == ".":  # a dot, but not what "has dots" means (sinksmtp)
        return frozenset(attributes | {"bogus", "nodots"})
    if "." not in name and ":" not in name:
        attributes.add("nodots")
    address = _address(name)
    if address is not None:
        attributes.add("bareip")
    elif name.startswith("[") and name.endswith("]"):
        inner = name[1:-1]
        tagged = inner[:5].lower() == "ipv6:"  # RFC 5321 4.1.3: IPv6 tagged, IPv4 not
        text = inner[5:] if tagged else inner
        address = _address(text) if (":" in text) == tagged else None
        if address is not None:
            attributes.add("properip")
    if address is not None:
        if address == _address(remote):
            attributes.add("remip")
        elif address == _address(local):
            attributes.add("myip")
        else:
            attributes.add("otherip")
    elif dbl_name(name) is None or name.endswith("."):
        attributes.add("bogus")
    return frozenset(attributes)


def _address(text: str | None) -> _IP | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
