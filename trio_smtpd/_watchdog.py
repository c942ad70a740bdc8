"""One task per server that enforces every session's deadline.

A session writes ``deadline`` (a time on trio's clock) whenever it starts to wait, on the
client or on the application, and the watchdog calls its ``expire(now)`` once that time
has passed; the session then wakes whatever it was waiting on (a plain socket with
``trio.lowlevel.notify_closing``, anything else by cancelling a cancel scope).

Why not a cancel scope with a deadline around each wait, trio's usual tool: entering and
leaving one costs about 7 µs, and one that is waiting holds about 650 bytes. That is more
than the rest of an SMTP round trip costs in CPU, and more than a tenth of an idle
connection's memory. Here a wait costs a float assignment; the watchdog sleeps until the
earliest deadline it knows of and then makes one pass over the sessions, so a timeout
fires at most ``resolution`` seconds late.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Protocol

import trio

__all__ = ["Watchdog", "Watched"]


class Watched(Protocol):
    #: When this member's current wait must end; ``math.inf`` while it is not waiting.
    deadline: float

    def expire(self, now: float) -> None:
        """The deadline has passed: end the wait (called once per deadline)."""


class Watchdog:
    """Watches ``members`` (a live collection, e.g. the server's set of sessions)."""

    def __init__(self, members: Collection[Watched], *, resolution: float = 0.1) -> None:
        self._members = members
        self._resolution = resolution
        #: When the watchdog will next look; members setting an earlier deadline say so
        #: with ``expect()``.
        self.next_check = math.inf
        self._last_check = -math.inf
        self._sleep: trio.CancelScope | None = None

    def expect(self, deadline: float) -> None:
        """A member has set ``deadline``; make sure the watchdog looks by then."""
        if deadline < self.next_check:
            self.next_check = deadline
            if self._sleep is not None:
                self._sleep.deadline = max(deadline, self._last_check + self._resolution)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            self.check(trio.current_time())
            with trio.CancelScope(deadline=self.next_check) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None

    def check(self, now: float) -> None:
        """Expire every member whose deadline has passed; note when to look again."""
        self._last_check = now
        earliest = math.inf
        expired = []
        for member in self._members:
            deadline = member.deadline
            if deadline <= now:
                expired.append(member)
            elif deadline < earliest:
                earliest = deadline
        for member in expired:
            member.expire(now)
            # A member that is still waiting on something else has a new deadline.
            if now < member.deadline < earliest:
                earliest = member.deadline
        self.next_check = max(earliest, now + self._resolution)
