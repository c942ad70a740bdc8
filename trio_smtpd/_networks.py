"""IP address membership in networks, the one way the project does it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["Network", "address_in"]

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
