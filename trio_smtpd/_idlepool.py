"""Connections that have been idle a while, waited on together in one epoll set.

A connection waiting with ``trio.lowlevel.wait_readable`` holds a chain of five suspended
calls inside trio and a registration in trio's I/O manager: about 1.5 KB, a quarter of
an idle connection. A parked connection's task instead sleeps in
``trio.lowlevel.wait_task_rescheduled`` while one task of the pool waits on an epoll set
holding every parked socket, and reschedules the owner of each socket that becomes
readable.

Parking costs a hop through the pool's task when the client speaks again, so only
connections idle for a whole sweep interval are parked: a connection in conversation never
is. Linux only (``select.epoll``); elsewhere connections simply stay with trio.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

__all__ = ["IdlePool", "Parkable"]

_ONESHOT_IN = getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLONESHOT", 1 << 30)


class Parkable(Protocol):
    def idle_check(self) -> None:
        """Park if idle since the last check; else note being idle now (see SocketTransport)."""


class IdlePool:
    """One per server; ``run()`` is its task, which also sweeps the sessions every
    ``interval`` seconds to find the idle ones."""

    available = hasattr(select, "epoll")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._epoll: select.epoll | None = None  # while run() runs
        self._parked: dict[int, trio.lowlevel.Task] = {}

    @property
    def running(self) -> bool:
        """True while ``run()`` runs: connections may be parked."""
        return self._epoll is not None

    def register(self, fd: int) -> None:
        """The current task parks on ``fd`` (it then awaits ``wait_task_rescheduled``)."""
        assert self._epoll is not None
        try:
            self._epoll.modify(fd, _ONESHOT_IN)
        except FileNotFoundError:  # new here (or a closed socket's reused number)
            self._epoll.register(fd, _ONESHOT_IN)
        self._parked[fd] = trio.lowlevel.current_task()

    def release(self, fd: int) -> bool:
        """Wake the task parked on ``fd`` now, readable or not; False if none is."""
        task = self._parked.pop(fd, None)
        if task is None:
            return False
        trio.lowlevel.reschedule(task)
        return True

    def forget(self, fd: int) -> None:
        """The parked wait on ``fd`` was cancelled."""
        self._parked.pop(fd, None)

    async def run(self, sessions: Callable[[], Iterable[Parkable]], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.available:
            task_status.started()
            return
        epoll = self._epoll = select.epoll()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep, sessions)
            try:
                while True:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                    for fd, _ in epoll.poll(0):
                        self.release(fd)
            finally:
                for fd in list(self._parked):
                    self.release(fd)
                self._epoll = None
                epoll.close()

    async def _sweep(self, sessions: Callable[[], Iterable[Parkable]]) -> None:
        while True:
            await trio.sleep(self.interval)
            for session in sessions():
                session.idle_check()
