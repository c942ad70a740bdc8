"""How many connections the server holds, overall and per client address.

Every accepted connection counts from its accept to its close, whatever stage it is in:
waiting for a PROXY header, in a TLS handshake, in its session. A connection from a
PROXY-protocol balancer counts towards the address the header names, once it has named
one (the balancer's own address is shared by every client behind it).
"""

from __future__ import annotations

from collections import Counter

from ._replies import Reply

__all__ = ["ConnectionLimits"]

TOO_MANY = Reply(421, "Too many connections, try again later", "4.7.0")
TOO_MANY_FROM_YOU = Reply(421, "Too many connections from your address", "4.7.0")


class ConnectionLimits:
    def __init__(self, total: int, per_ip: int) -> None:
        self._total = total
        self._per_ip_limit = per_ip
        self._count = 0
        self._per_ip: Counter[str] = Counter()

    @property
    def count(self) -> int:
        """Connections held now."""
        return self._count

    def admit(self, ip: str | None) -> Reply | None:
        """Count a new connection, or say why it is refused (then it is not counted).

        ``ip`` is None when the client's address is not known yet (behind a balancer).
        """
        if self._count >= self._total:
            return TOO_MANY
        if ip is not None and self._per_ip[ip] >= self._per_ip_limit:
            return TOO_MANY_FROM_YOU
        self._count += 1
        if ip is not None:
            self._per_ip[ip] += 1
        return None

    def admit_address(self, ip: str) -> Reply | None:
        """A counted connection's address is now known: count it there, or refuse."""
        if self._per_ip[ip] >= self._per_ip_limit:
            return TOO_MANY_FROM_YOU
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str | None) -> None:
        """A counted connection closed; ``ip`` as it was last counted (None if never)."""
        self._count -= 1
        if ip is not None:
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
