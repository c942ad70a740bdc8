"""The application's time to decide, as the deadline of the cancel scope around its
handler.

A decision handed to the application sets the deadline (``Timeouts.decision`` or
``message_decision`` from now), where ``trio.current_effective_deadline()`` shows it.
The session waits on its client inside that same scope, so before each wait a deadline
that could fire during it is lifted: the client's own deadline is the one that counts
then, and the application is not the one being waited on.

Moving a cancel scope's deadline is not free (see benchmarks/README.md), and a session
moves from decision to client wait to decision many times a second. So a deadline is
set ``SLACK`` seconds later than asked and kept while it is still right to within that
slack: a timeout fires at most ``SLACK`` late, never early. With the default timeouts
(a decision's time equal to a command's), a busy session's deadline then stays put
across its client's waits and its next decisions.
"""

from __future__ import annotations

import math

import trio

__all__ = ["SLACK", "AppDeadline"]

#: How much later than asked a decision's deadline may fire.
SLACK = 0.2


class AppDeadline:
    """The deadline of one session's application scope (None: no handler running)."""

    __slots__ = ("_clock", "_margin", "_scope", "cap", "deadline")

    def __init__(self, cap: float = math.inf, *, margin: float = 0.0) -> None:
        #: No deadline goes past this (the session's time cap).
        self.cap = cap
        # How late a client's deadline may fire (the watchdog's resolution): an
        # application deadline must be later than that to be left alone during a wait.
        self._margin = margin
        self._scope: trio.CancelScope | None = None
        self._clock = trio.lowlevel.current_clock()
        #: The scope's deadline, as last set here (reading the scope's own costs more).
        self.deadline = math.inf

    @property
    def scope(self) -> trio.CancelScope | None:
        """The cancel scope around the handler, while it runs."""
        return self._scope

    def open(self, timeout: float) -> trio.CancelScope:
        """The scope to run the handler in, its deadline already the one its first
        decision (``timeout``) will need: setting it now, before the scope is entered,
        costs nothing (see benchmarks/README.md)."""
        deadline = min(self._clock.current_time() + timeout + SLACK, self.cap)
        self._scope = trio.CancelScope(deadline=deadline)
        self.deadline = deadline
        return self._scope

    def close(self) -> None:
        """The handler is over."""
        self._scope = None
        self.deadline = math.inf

    def hold(self, timeout: float) -> None:
        """A decision goes to the application: it has ``timeout`` seconds from now."""
        if self._scope is None:
            return
        wanted = self._clock.current_time() + timeout
        if wanted > self.cap:
            wanted = self.cap
        if not wanted <= self.deadline <= wanted + SLACK:
            deadline = wanted + SLACK
            self.deadline = self._scope.deadline = deadline if deadline < self.cap else self.cap

    def wait_until(self, deadline: float) -> None:
        """The session is about to wait on its client, until ``deadline`` at the latest:
        lift the application's deadline if it could fire first."""
        if self.deadline < deadline + self._margin:
            self.lift()

    def lift(self) -> None:
        """No deadline for the application until the next decision."""
        if self._scope is not None and self.deadline != math.inf:
            self.deadline = self._scope.deadline = math.inf
