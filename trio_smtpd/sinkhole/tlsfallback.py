"""TLS fallback: stop offering STARTTLS to an address whose handshakes keep failing.

Some clients have TLS stacks that cannot talk to ours; after ``failures`` failed
handshakes from one IP address within ``hours``, that address is no longer offered
STARTTLS, so it can still deliver in plaintext (as sinksmtp does). Memory is bounded:
at most ``max_addresses`` addresses are remembered, the stalest forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TLSFallback", "parse_fallback"]


def parse_fallback(text: str) -> tuple[int, float]:
    """``N:HOURS`` as given to ``--tls-fallback``; ValueError if malformed."""
    count, sep, hours = text.partition(":")
    try:
        period = float(hours)
    except ValueError:
        period = None
    if not sep or not count.isdigit() or int(count) < 1 or period is None:
        raise ValueError(f"expected FAILURES:HOURS, got {text!r}")
    # As every other duration (configure.py): NaN or infinite hours would turn the
    # fallback off without a word, every comparison with the cutoff being false.
    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"HOURS must be a finite number of hours, more than 0 "
                         f"(not {hours})")
    return int(count), period


@dataclass
class TLSFallback:
    failures: int
    hours: float
    max_addresses: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def record_failure(self, ip: str) -> None:
        times = self._seen.pop(ip, None) or deque(maxlen=self.failures)
        times.append(self.clock())
        self._seen[ip] = times
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)

    def offer_starttls(self, ip: str) -> bool:
        times = self._seen.get(ip)
        if times is None:
            return True
        cutoff = self.clock() - self.hours * 3600
        recent = sum(1 for t in times if t >= cutoff)
        return recent < self.failures
