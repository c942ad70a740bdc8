"""Connections that have been idle a while, waited on together in one epoll set.

A connection waiting with ``trio.lowlevel.wait_readable`` holds a chain of suspended calls
inside trio and a registration in trio's I/O manager. A parked connection's task instead
sleeps in ``trio.lowlevel.wait_task_rescheduled`` while the pool's one task waits on an
epoll set holding every parked socket, and reschedules the owner of each socket that
becomes readable: less memory per idle connection (see benchmarks/README.md).

Parking costs a hop through the pool's task when the client speaks again, so the socket
transport parks only connections that have said nothing yet or have been idle a while: a
connection in conversation never is. Linux only (``select.epoll``); elsewhere connections
simply stay with trio.
"""

from __future__ import annotations

import select

import trio

__all__ = ["IdlePool"]

_ONESHOT_IN = getattr(select, "EPOLLIN", 1) | getattr(select, "EPOLLONESHOT", 1 << 30)


class IdlePool:
    """One per server; ``run()`` is its task."""

    available = hasattr(select, "epoll")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None  # while run() runs
        self._parked: dict[int, trio.lowlevel.Task] = {}

    @property
    def running(self) -> bool:
        """True while ``run()`` runs: connections may be parked."""
        return self._epoll is not None

    def park(self, fd: int) -> None:
        """The current task parks on ``fd``; it then awaits ``wait_task_rescheduled``
        with an abort function that calls ``forget(fd)``."""
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if not self.available:
            task_status.started()
            return
        epoll = self._epoll = select.epoll()
        task_status.started()
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
