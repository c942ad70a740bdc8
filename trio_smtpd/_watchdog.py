"""One task per server that ends the waits of plain-socket connections on time.

A connection driven as a plain socket (``_socket_transport.py``) waits with trio's
low-level ``wait_readable``/``wait_writable``, which take no deadline. Before such a wait
it calls ``watch(self, deadline)``, and ``unwatch(self)`` after; once a deadline has
passed, the watchdog calls the member's ``expire(now)``, which ends the wait. Entering
and leaving a cancel scope per wait would do the same at several times the cost of an SMTP
round trip's own work (see benchmarks/README.md); a deadline fires at most ``resolution``
seconds late.

Each member has at most one live entry in a heap of times to look at it. A new deadline
later than that entry (each command of a busy session moves its deadline on) costs no
heap operation at all: when the entry comes up, the member is looked at and, if its
deadline has moved, queued again for then. Only a deadline earlier than the entry is
pushed; the entry it replaces, and those of members that are gone (``forget()``), are
skipped when they come up, and the heap is rebuilt when they make up most of it.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Protocol

import trio

__all__ = ["Watchdog", "Watched"]


class Watched(Protocol):
    #: The deadline this member is being watched for; ``math.inf`` when none.
    watched_deadline: float
    #: When its live heap entry comes up (``math.inf``: none); kept by the watchdog.
    queued_at: float

    def expire(self, now: float) -> None:
        """``watched_deadline`` has passed (it was reset to ``math.inf`` first)."""

    def __lt__(self, other: Any) -> bool:
        """Any order: it breaks ties between equal deadlines in the heap."""


class Watchdog:
    """Calls ``expire()`` on each watched member once its deadline has passed."""

    def __init__(self, *, resolution: float = 0.1) -> None:
        #: How late a deadline may fire, at most.
        self.resolution = resolution
        self._heap: list[tuple[float, Watched]] = []
        self._stale = 0
        self._last_check = -math.inf
        self._sleep: trio.CancelScope | None = None
        self._wake_at = math.inf  # the sleep's deadline (reading the scope's costs more)

    def watch(self, member: Watched, deadline: float) -> None:
        """Expire ``member`` at ``deadline`` (replacing any deadline it had)."""
        member.watched_deadline = deadline
        if deadline >= member.queued_at:
            return  # (looked at by then anyway)
        if member.queued_at != math.inf:
            self._stale += 1
        member.queued_at = deadline
        heapq.heappush(self._heap, (deadline, member))
        sleep = self._sleep
        if sleep is not None and deadline < self._wake_at:
            self._wake_at = sleep.deadline = max(deadline, self._last_check + self.resolution)

    def unwatch(self, member: Watched) -> None:
        """No deadline for ``member`` now (its entry stays, for its next wait)."""
        member.watched_deadline = math.inf

    def forget(self, member: Watched) -> None:
        """``member`` is gone: its entry is dropped (at once, if most entries are of
        members gone: the watchdog may sleep for a whole command timeout meanwhile)."""
        member.watched_deadline = math.inf
        if member.queued_at != math.inf:
            member.queued_at = math.inf
            self._stale += 1
            self._prune_if_stale()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            self.check(trio.current_time())
            wake_at = self._heap[0][0] if self._heap else math.inf
            self._wake_at = max(wake_at, self._last_check + self.resolution)
            with trio.CancelScope(deadline=self._wake_at) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None

    def check(self, now: float) -> None:
        """Expire every member whose deadline has passed."""
        self._last_check = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            queued, member = heapq.heappop(heap)
            if member.queued_at != queued:
                self._stale = max(0, self._stale - 1)
                continue
            deadline = member.watched_deadline
            if deadline <= now:
                member.queued_at = member.watched_deadline = math.inf
                member.expire(now)
            elif deadline != math.inf:  # moved on since: look again then
                member.queued_at = deadline
                heapq.heappush(heap, (deadline, member))
            else:
                member.queued_at = math.inf
        self._prune_if_stale()

    def _prune_if_stale(self) -> None:
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._prune()

    def _prune(self) -> None:
        # (In place: a check() under way holds the list.)
        self._heap[:] = [entry for entry in self._heap if entry[1].queued_at == entry[0]]
        heapq.heapify(self._heap)
        self._stale = 0
