"""How many connections the server holds, overall and per client address, and how fast
one address may open them.

Every accepted connection counts from its accept to its close, whatever stage it is in:
waiting for a PROXY header, in a TLS handshake, in its session. A connection from a
PROXY-protocol balancer counts towards the address the header names, once it has named
one (the balancer's own address is shared by every client behind it).

The rate limit (like Postfix's ``smtpd_client_connection_rate_limit``) counts the
connections an address opened recently (see ``_ratelimit``); a connection refused for
any reason does not count towards it, so a client that keeps hammering gets back in as
soon as it slows down to the allowed rate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ._ratelimit import RateLimit
from ._replies import Reply

__all__ = ["ConnectionLimits"]

TOO_MANY = Reply(421, "Too many connections, try again later", "4.7.0")
TOO_MANY_FROM_YOU = Reply(421, "Too many connections from your address", "4.7.0")
TOO_FAST = Reply(421, "Too many new connections from your address, slow down", "4.7.0")


class ConnectionLimits:
    def __init__(self, total: int, per_ip: int, rate: RateLimit | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if rate is not None and clock is None:
            raise ValueError("a rate limit needs a clock")
        self._total = total
        self._per_ip_limit = per_ip
        self._rate = rate
        self._clock = clock
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
        if ip is not None:
            refusal = self._refusal(ip)
            if refusal is not None:
                return refusal
            self._per_ip[ip] += 1
        self._count += 1
        return None

    def admit_address(self, ip: str) -> Reply | None:
        """A counted connection's address is now known: count it there, or refuse."""
        refusal = self._refusal(ip)
        if refusal is None:
            self._per_ip[ip] += 1
        return refusal

    def release(self, ip: str | None) -> None:
        """A counted connection closed; ``ip`` as it was last counted (None if never)."""
        self._count -= 1
        if ip is not None:
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]

    def _refusal(self, ip: str) -> Reply | None:
        if self._per_ip[ip] >= self._per_ip_limit:
            return TOO_MANY_FROM_YOU
        if self._rate is not None:
            assert self._clock is not None
            if not self._rate.take(ip, self._clock()):
                return TOO_FAST
        return None
