"""The fast path for plain TCP and Unix-socket connections: a non-blocking socket driven
directly.

Each call tries the system call first and only waits (``trio.lowlevel.wait_readable`` or
``wait_writable``) when the socket would block; ``trio.SocketStream`` would put
checkpoints and a cancel scope around every call instead, which under a load of short SMTP
sessions was about half of the server's CPU time (see benchmarks/README.md). A read that
did not have to wait still yields to the other tasks, so a client that never stops sending
cannot starve them.

Deadlines are kept by the server's ``Watchdog``: it calls ``expire()``, which ends the
wait with ``trio.lowlevel.notify_closing``; so does ``wake()`` at shutdown. That call
expects the socket to be closed next, with no new wait on it: the session then writes its
421 only as far as that needs no wait, and closes the socket. A new connection waits for
its first command in the server's ``IdlePool``, where an idle connection costs less
memory; it leaves the pool for good once the client has spoken.
"""

from __future__ import annotations

import math
import socket

import trio

from ._idlepool import IdlePool
from ._transport import EOF, TIMEOUT, WOKEN, Outcome, TransportError
from ._watchdog import Watchdog

__all__ = ["SocketTransport"]

_IDLE, _READING, _WRITING, _PARKED = 0, 1, 2, 3


class SocketTransport:
    """A non-blocking plain socket, its calls tried before any wait."""

    __slots__ = ("_deadline", "_fd", "_fresh", "_notified", "_pool", "_sock", "_state",
                 "_watchdog", "_why", "queued_at", "watched_deadline")

    def __init__(self, sock: socket.socket, watchdog: Watchdog,
                 pool: IdlePool | None = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._watchdog = watchdog
        self._pool = pool
        # A new connection waits for its first command in the idle pool: many never say
        # anything (scanners, clients' pools of idle connections).
        self._fresh = pool is not None
        self._state = _IDLE
        self._why: Outcome | None = None  # why the current wait ended early
        # Set once a wait was ended by notify_closing: the socket is to be closed, and
        # nothing may wait on it again (trio expects that), so sends no longer wait.
        self._notified = False
        self._deadline = math.inf
        #: For the watchdog (see ``Watched``).
        self.watched_deadline = math.inf
        self.queued_at = math.inf

    async def receive(self, max_bytes: int, deadline: float,
                      expect_wait: bool = False) -> bytes | Outcome:
        if not expect_wait:  # (else a try now would mostly be a wasted system call)
            data = _recv_nowait(self._sock, max_bytes)
            if data is not None:
                await trio.lowlevel.checkpoint()  # the bytes were there: let others run
                return data or EOF
        # (The waits are written out here, not in helpers: this is every session's path
        # to its client, and a suspended call less per wait shows in benchmarks/README.md.)
        watchdog = self._watchdog
        while True:
            self._why = None
            watchdog.watch(self, deadline)
            pool = self._pool
            try:
                if self._fresh and pool is not None and pool.running:
                    self._state = _PARKED
                    pool.park(self._fd)
                    await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                elif self._notified:
                    return TIMEOUT
                else:
                    self._state = _READING
                    await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                if self._why is None:
                    raise
            finally:
                self._state = _IDLE
                watchdog.unwatch(self)
            self._fresh = False
            if self._why is not None:
                return self._why
            data = _recv_nowait(self._sock, max_bytes)
            if data is not None:
                return data or EOF

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        try:
            sent = self._sock.send(data)
        except OSError:  # (would block, or broken: send() says which)
            return data
        return memoryview(data)[sent:] if sent < len(data) else b""

    async def send(self, data: bytes | memoryview, deadline: float) -> bool:
        view = memoryview(data)
        while True:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise TransportError(exc) from exc
            view = view[sent:]
            if not view:
                return True
            if await self._wait_writable(deadline) is not None:
                return False

    def wake(self) -> None:
        self._end_wait(WOKEN)

    def expire(self, now: float) -> None:
        """From the watchdog: the current wait's deadline has passed."""
        self._end_wait(TIMEOUT)

    def stream(self) -> trio.abc.Stream:
        return trio.SocketStream(trio.socket.from_stdlib_socket(self._sock))

    async def aclose(self) -> None:
        self._end_wait(WOKEN)  # (only when another task closes us during a wait)
        self._watchdog.forget(self)
        self._sock.close()

    async def _wait_writable(self, deadline: float) -> Outcome | None:
        """Wait until the socket is writable (None), or the deadline or ``wake()``
        comes."""
        if deadline <= trio.current_time() or self._notified:
            return TIMEOUT
        self._why = None
        self._watchdog.watch(self, deadline)
        self._state = _WRITING
        try:
            await trio.lowlevel.wait_writable(self._fd)
        except trio.ClosedResourceError:
            if self._why is None:
                raise
        finally:
            self._state = _IDLE
            self._watchdog.unwatch(self)
        return self._why

    def _abort_park(self, _: object) -> trio.lowlevel.Abort:
        assert self._pool is not None
        self._pool.forget(self._fd)
        return trio.lowlevel.Abort.SUCCEEDED

    def __lt__(self, other: SocketTransport) -> bool:
        # (For the watchdog's heap, when two deadlines are equal: any order will do.)
        return id(self) < id(other)

    def _end_wait(self, why: Outcome) -> None:
        state = self._state
        if state == _IDLE or self._why is not None:
            return
        self._why = why
        if state == _PARKED:
            assert self._pool is not None
            self._pool.release(self._fd)
        else:
            self._notified = True
            trio.lowlevel.notify_closing(self._fd)


def _recv_nowait(sock: socket.socket, max_bytes: int) -> bytes | None:
    """``recv()``, or None if it would block."""
    try:
        return sock.recv(max_bytes)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise TransportError(exc) from exc
