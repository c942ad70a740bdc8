"""A client connection's bytes: a plain socket driven directly, or any trio stream.

``SocketTransport`` is the fast path, for plain TCP and Unix-socket connections: it tries
the system call first and only waits (``trio.lowlevel.wait_readable``/``wait_writable``)
when the socket would block. ``trio.SocketStream`` would put two checkpoints and a cancel
scope around every call instead; under a load of short SMTP sessions that was half of the
server's CPU time. It still yields to other tasks after every read that did not have to
wait, so a client that never stops sending cannot starve the others.

``StreamTransport`` carries everything else: TLS (``trio.SSLStream``), in-memory streams
in tests, streams from listeners of the application's own.

Neither keeps time. The session sets its deadline before an operation that may wait and
the server's watchdog calls ``wake()`` when it passes (or at shutdown); the operation then
returns ``None``/``False`` and every later one returns at once. Errors of the connection
itself (reset, broken pipe, TLS alerts) are raised as ``TransportError``.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import ssl
from collections.abc import Awaitable
from typing import Protocol

import trio

from ._idlepool import IdlePool

__all__ = [
    "PARK",
    "SocketTransport",
    "StreamTransport",
    "Transport",
    "TransportError",
    "transport_for",
]


class _Park(enum.Enum):
    PARK = "park"


PARK = _Park.PARK


class TransportError(Exception):
    """The connection broke (reset, broken pipe, TLS error...); its cause is chained."""


class Transport(Protocol):
    #: True once ``wake()`` was called: the session is ending (timeout or shutdown).
    woken: bool

    async def receive(self, max_bytes: int, *, wait_first: bool = False
                      ) -> bytes | bytearray | _Park | None:
        """Bytes from the client, ``b""`` at end of file, None if woken, or PARK.

        ``wait_first``: the client is expected to be silent until it has read our reply,
        so skip trying to read before waiting (a wasted system call per command).
        PARK: the connection has been idle a while; await ``park()``, then receive again.
        """

    def park(self) -> Awaitable[None]:
        """The wait in the idle pool after ``receive()`` said PARK."""

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        """Send what can be sent without waiting; return the rest (empty when all went)."""

    async def send(self, data: bytes | memoryview) -> bool:
        """Send all of ``data``; False if woken first (then it may be partly sent)."""

    def wake(self) -> None:
        """End the current wait, and every later one at once (any task may call this)."""

    def idle_check(self) -> None:
        """Called once per idle pool sweep (see ``_idlepool.py``)."""

    def stream(self) -> trio.abc.Stream:
        """The connection as a trio stream, to wrap in TLS; this transport is then done."""

    async def aclose(self) -> None:
        """Close the connection (without waiting on a client that does not read)."""


_READING, _WRITING = 1, 2


class SocketTransport:
    """A non-blocking plain socket, its calls tried before any wait."""

    __slots__ = ("_fd", "_idle", "_park", "_parked", "_pool", "_sock", "_waiting", "woken")

    def __init__(self, sock: socket.socket, pool: IdlePool | None = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._pool = pool if pool is not None and pool.running else None
        self._waiting = 0  # _READING or _WRITING while blocked
        self._idle = False  # seen waiting to read by the idle pool's last sweep
        # The idle pool asked for this connection. A new one starts there: many never say
        # anything (scanners, idle pools of client connections), and moving one there
        # later frees memory in small pieces, which the allocator does not give back.
        self._park = self._pool is not None
        self._parked = False  # waiting in the idle pool
        self.woken = False

    async def receive(self, max_bytes: int, *, wait_first: bool = False
                      ) -> bytes | _Park | None:
        # (The waits are written out here rather than in a helper: an idle connection is
        # a chain of suspended calls, and each one costs memory.)
        if self._parked:  # back from the idle pool
            self._parked = self._park = False
            self._waiting = 0
        sock = self._sock
        waited = False
        while not self.woken:
            if waited or not wait_first:
                data = _recv_nowait(sock, max_bytes)
                if data is not None:
                    if not waited:
                        # The bytes were there already: let other connections run too.
                        await trio.lowlevel.checkpoint()
                    return data
            if self._park:  # (a new connection: see __init__)
                return PARK
            self._waiting = _READING
            self._idle = False
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                # From notify_closing(), which only wake() and idle_check() call. (This
                # gives our frame a frame object, 230 bytes for good, but only here.)
                if self._park and not self.woken:
                    return PARK
                if not self.woken:
                    raise
            finally:
                self._waiting = 0
            waited = True
        return None

    def park(self) -> Awaitable[None]:
        """After ``receive()`` said PARK: wait in the idle pool until the client speaks
        (or ``wake()``), then call ``receive()`` again. Returns the wait itself, so that
        no call of ours stays suspended in between."""
        if self.woken or self._pool is None or not self._pool.running:
            self._park = False  # (the server is going away: stay with trio)
            return trio.lowlevel.checkpoint()
        self._pool.register(self._fd)
        self._parked = True
        self._waiting = _READING
        return trio.lowlevel.wait_task_rescheduled(self._abort_park)

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            return data
        except OSError as exc:
            raise TransportError(exc) from exc
        return memoryview(data)[sent:] if sent < len(data) else b""

    async def send(self, data: bytes | memoryview) -> bool:
        sock = self._sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise TransportError(exc) from exc
            view = view[sent:]
            if not view:
                break
            if self.woken:  # a last word (421) is only sent if it fits without waiting
                return False
            self._waiting = _WRITING
            try:
                await trio.lowlevel.wait_writable(self._fd)
            except trio.ClosedResourceError:
                if not self.woken:
                    raise
            finally:
                self._waiting = 0
        return True

    def idle_check(self) -> None:
        """From the idle pool's sweep: a read wait seen twice is moved into the pool."""
        if self._waiting != _READING or self._pool is None or self._park or self._parked:
            return
        if not self._idle:
            self._idle = True
        else:
            self._park = True
            trio.lowlevel.notify_closing(self._fd)  # ends trio's wait: then park

    def _abort_park(self, raise_cancel: object) -> trio.lowlevel.Abort:
        assert self._pool is not None
        self._pool.forget(self._fd)
        return trio.lowlevel.Abort.SUCCEEDED

    def wake(self) -> None:
        if self.woken:
            return
        self.woken = True
        if self._parked:
            assert self._pool is not None
            self._pool.release(self._fd)
        elif self._waiting and not self._park:
            trio.lowlevel.notify_closing(self._fd)
        # (asked to park but not parked yet: trio's wait has ended, and it sees woken)

    def stream(self) -> trio.abc.Stream:
        return trio.SocketStream(trio.socket.from_stdlib_socket(self._sock))

    async def aclose(self) -> None:
        if self._waiting and not self._parked:  # closed by another task during a wait
            self.wake()
        self._sock.close()


class StreamTransport:
    """Any trio stream; a wait is a cancel scope that ``wake()`` cancels."""

    __slots__ = ("_scope", "_stream", "woken")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._scope: trio.CancelScope | None = None
        self.woken = False

    async def receive(self, max_bytes: int, *, wait_first: bool = False
                      ) -> bytes | bytearray | None:
        if self.woken:
            return None
        with trio.CancelScope() as self._scope:
            try:
                return await self._stream.receive_some(max_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                raise TransportError(exc) from exc
            finally:
                self._scope = None
        return None

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        return data  # a stream has no way to try without waiting

    def park(self) -> Awaitable[None]:
        raise AssertionError("a stream transport is never parked")

    async def send(self, data: bytes | memoryview) -> bool:
        if self.woken:
            # The client stopped reading or the session timed out: one bounded try.
            with trio.move_on_after(0.1):
                await self._send(data)
                return True
            return False
        with trio.CancelScope() as self._scope:
            try:
                await self._send(data)
                return True
            finally:
                self._scope = None
        return False

    async def _send(self, data: bytes | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            raise TransportError(exc) from exc

    def wake(self) -> None:
        self.woken = True
        if self._scope is not None:
            self._scope.cancel()

    def idle_check(self) -> None:
        pass  # only plain sockets can be parked

    def stream(self) -> trio.abc.Stream:
        return self._stream

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope, contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)


def _recv_nowait(sock: socket.socket, max_bytes: int) -> bytes | None:
    """``recv()``, or None if it would block.

    (A helper, so that the BlockingIOError is caught in a frame that ends at once: an
    exception passing through a long-lived frame, such as the receive loop of a waiting
    connection, gives it a frame object for the traceback, 230 bytes for good.)
    """
    try:
        return sock.recv(max_bytes)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise TransportError(exc) from exc


def transport_for(stream: trio.abc.Stream, pool: IdlePool | None = None) -> Transport:
    """The fastest transport for an accepted stream: a trio.SocketStream gives up its
    socket to a ``SocketTransport``; any other stream is carried as it is."""
    if type(stream) is trio.SocketStream:
        sock = stream.socket
        family, kind, proto = sock.family, sock.type, sock.proto
        # detach() hands the descriptor over; trio's wrapper is never used again.
        return SocketTransport(socket.socket(family, kind, proto, fileno=sock.detach()), pool)
    return StreamTransport(stream)
