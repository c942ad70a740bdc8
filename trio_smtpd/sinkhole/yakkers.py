"""Do-nothing clients ("yakkers", sinksmtp's ``-dncount``/``-dndur``/``-minphase``).

Some clients connect again and again and never get anywhere: no HELO that we accept, or
no message. With ``--dncount N``, an address whose sessions end ``N`` times without
reaching ``--minphase`` (``helo`` by default; ``mail``, ``rcpt``, ``data``, ``message``
for a message received whatever its answer, ``accepted`` for one accepted), each within
``--dndur`` of the one before (8 hours by default), is refused at connect with 421 from
then on, until ``--dndur`` has passed since its last session counted. A session that does
reach the phase clears the address's count. As in sinksmtp, a session whose TLS handshake
failed does not count (that is ``--tls-fallback``'s business), nor does a session of an
address already refused; a rule with ``make_yakker = true`` makes its client a
do-nothing client at once when the session ends.

The table is per process (with ``--workers``, each worker keeps its own) and bounded:
at most 100,000 addresses, the stalest forgotten first.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable

from .logs import log_event

__all__ = ["MINPHASES", "Progress", "Yakkers", "parse_duration"]

#: Phases in order; sinksmtp's names (ehlo, from, to) are accepted too.
MINPHASES = ("helo", "mail", "rcpt", "data", "message", "accepted")
ALIASES = {"ehlo": "helo", "from": "mail", "to": "rcpt"}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``8h`` or ``1h30m`` (Go's style)."""
    found = _DURATION.fullmatch(text.strip())
    if not text.strip() or found is None:
        raise ValueError(f"{text!r} is not a duration (like 3600, 90s, 30m, 8h)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


class Yakkers:
    """Which addresses keep connecting without getting anywhere."""

    def __init__(self, count: int, window: float, minphase: str = "helo", *,
                 clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 100_000) -> None:
        if count < 1 or not window > 0:
            raise ValueError("a do-nothing count needs to be at least 1, and its window "
                             "positive")
        minphase = ALIASES.get(minphase, minphase)
        if minphase not in MINPHASES:
            raise ValueError(f"minphase must be one of {', '.join(MINPHASES)}")
        self.count, self.window, self.minphase = count, window, minphase
        self._clock = clock
        self._max = max_addresses
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()  # ip: (count, last)

    def refused(self, ip: str) -> bool:
        """Is ``ip`` a do-nothing client now (to be refused at connect)?"""
        return self._current(ip) >= self.count

    def session_ended(self, ip: str, progress: Progress, *, tls_failed: bool) -> None:
        """Count (or clear) a finished session of ``ip``."""
        if progress.forced:
            if self._current(ip) < self.count:
                log_event("yakker", ip=ip, outcome="made one by a rule")
            self._set(ip, self.count)
        elif progress.reached(self.minphase):
            self._seen.pop(ip, None)
        elif not tls_failed and not progress.refused_at_connect:
            count = self._current(ip) + 1
            self._set(ip, count)
            if count == self.count:
                log_event("yakker", ip=ip, outcome="added", sessions=count)

    def _current(self, ip: str) -> int:
        entry = self._seen.get(ip)
        if entry is None:
            return 0
        if self._clock() - entry[1] >= self.window:
            del self._seen[ip]
            return 0
        return entry[0]

    def _set(self, ip: str, count: int) -> None:
        self._seen[ip] = (count, self._clock())
        self._seen.move_to_end(ip)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)


class Progress:
    """How far one session got (the phases whose step we accepted)."""

    def __init__(self) -> None:
        self.phases: set[str] = set()
        #: A rule with ``make_yakker`` matched.
        self.forced = False
        self.refused_at_connect = False

    def reached(self, phase: str) -> bool:
        later = MINPHASES[MINPHASES.index(phase):]
        return not self.phases.isdisjoint(later)
