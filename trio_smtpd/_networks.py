"""IP address membership in networks, and port numbers as clients write them: the one
way the project reads each."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

__all__ = ["Network", "address_in", "is_port"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_in(host: str, networks: Iterable[Network]) -> bool:
    """Whether ``host`` is in any of ``networks``; an IPv4-mapped IPv6 address (how a
    dual-stack socket reports an IPv4 client) counts as its IPv4 address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


# ASCII digits only: str.isdigit() also takes "²" and other scripts' digits, which int()
# then refuses.
_PORT = re.compile(r"[0-9]{1,5}")


def is_port(text: str) -> bool:
    """Whether ``text`` is a TCP port number, 0 to 65535, in ASCII digits."""
    return _PORT.fullmatch(text) is not None and int(text) <= 65535
