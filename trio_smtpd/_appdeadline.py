"""The application's time to decide, as the deadline of the cancel scope around its
handler.

A decision handed to the application sets the deadline (``Timeouts.decision`` or
``message_decision`` from now), where ``trio.current_effective_deadline()`` shows it;
before the session waits on the client, a deadline that could fire during that wait is
lifted. Moving a cancel scope's deadline is not free (see benchmarks/README.md), so a
deadline set at most ``SLACK`` seconds ago is kept when it is still right to within that
slack, and one that falls after the client's own deadline is left in place: a timeout
then fires at most ``SLACK`` late, never early.
"""

from __future__ import annotations

import math

import trio

__all__ = ["AppDeadline"]

SLACK = 0.1


class AppDeadline:
    """The deadline of one session's application scope (None: no handler running)."""

    __slots__ = ("_scope", "cap", "deadline")

    def __init__(self, cap: float = math.inf) -> None:
        #: No deadline goes past this (the session's time cap).
        self.cap = cap
        self._scope: trio.CancelScope | None = None
        #: The scope's deadline, as last set here (reading the scope's own costs more).
        self.deadline = math.inf

    @property
    def scope(self) -> trio.CancelScope | None:
        """The cancel scope around the handler, while it runs."""
        return self._scope

    @scope.setter
    def scope(self, scope: trio.CancelScope | None) -> None:
        self._scope = scope
        self.deadline = math.inf if scope is None else scope.deadline

    def hold(self, timeout: float) -> None:
        """A decision goes to the application: it has ``timeout`` seconds from now."""
        if self._scope is None:
            return
        wanted = trio.current_time() + timeout
        if wanted > self.cap:
            wanted = self.cap
        if not wanted <= self.deadline <= wanted + SLACK:
            deadline = wanted + SLACK
            self.deadline = self._scope.deadline = deadline if deadline < self.cap else self.cap

    def lift(self) -> None:
        """The session is about to wait on the client: no deadline for the application
        (which is not the one being waited on). Callers skip this when ``deadline`` is
        later than their own wait's."""
        if self._scope is not None and self.deadline != math.inf:
            self.deadline = self._scope.deadline = math.inf
