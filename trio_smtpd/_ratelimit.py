"""Rates per key (a client address): at most ``count`` events per ``period`` seconds.

Each key has a token bucket: it holds up to ``count`` tokens, an event takes one, and
tokens come back at ``count / period`` a second. So a client may do ``count`` things at
once and then one every ``period / count`` seconds: the same budget as "``count`` per
``period``" (Postfix's anvil), without the burst of twice the budget that a fixed window
allows across its boundary, and in two numbers per key.

Memory is bounded: at most ``max_keys`` keys are remembered, the least recently seen
forgotten first (a client that many other addresses push out gets a fresh budget), and
keys whose buckets are full again (idle for a whole period) are dropped once they are the
oldest, so the table holds only clients seen recently.
Time comes from the caller (``now``, any monotonic clock).
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["RateLimit"]


class RateLimit:
    """``count`` events per ``period`` seconds per key, with bursts up to ``count``."""

    __slots__ = ("_buckets", "_max_keys", "count", "period")

    def __init__(self, count: int, period: float, *, max_keys: int = 100_000) -> None:
        if count < 1 or not 0 < period < math.inf or max_keys < 1:
            raise ValueError("a rate needs a count of at least 1 and a finite period")
        self.count = count
        self.period = period
        self._max_keys = max_keys
        # key -> (tokens left, when that was computed); oldest use first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        """Count one event for ``key`` if its budget allows it (True), else False."""
        tokens = self._tokens(key, now)
        allowed = tokens >= 1
        self._store(key, tokens - 1 if allowed else tokens, now)
        return allowed

    def allows(self, key: str, now: float) -> bool:
        """Whether ``key``'s budget has room for one more event (nothing is counted)."""
        return self._tokens(key, now) >= 1

    def spend(self, key: str, now: float) -> float:
        """Count one event for ``key`` whatever its budget; how much of it is now used
        (1 after one event in a while; ``count`` or more: over budget)."""
        tokens = self._tokens(key, now) - 1
        self._store(key, tokens, now)
        return self.count - tokens

    def used(self, key: str, now: float) -> float:
        """How much of ``key``'s budget is used now (0: none, ``count``: all)."""
        return self.count - self._tokens(key, now)

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.count)
        tokens, then = entry
        return min(float(self.count), tokens + (now - then) * self.count / self.period)

    def _store(self, key: str, tokens: float, now: float) -> None:
        buckets = self._buckets
        buckets[key] = (tokens, now)
        buckets.move_to_end(key)
        # The oldest entries, once their buckets have refilled, say nothing: drop up to
        # two of them per use, so that the table shrinks back when the clients go.
        for _ in range(2):
            oldest = next(iter(buckets))
            if oldest == key or self._tokens(oldest, now) < self.count:
                break
            del buckets[oldest]
        while len(buckets) > self._max_keys:
            buckets.popitem(last=False)
