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
import socket
import ssl
from typing import Protocol

import trio

__all__ = ["SocketTransport", "StreamTransport", "Transport", "TransportError", "transport_for"]


class TransportError(Exception):
    """The connection broke (reset, broken pipe, TLS error...); its cause is chained."""


class Transport(Protocol):
    #: True once ``wake()`` was called: the session is ending (timeout or shutdown).
    woken: bool

    async def receive(self, max_bytes: int, *, wait_first: bool = False
                      ) -> bytes | bytearray | None:
        """Bytes from the client, ``b""`` at end of file, or None if woken.

        ``wait_first``: the client is expected to be silent until it has read our reply,
        so skip trying to read before waiting (a wasted system call per command).
        """

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        """Send what can be sent without waiting; return the rest (empty when all went)."""

    async def send(self, data: bytes | memoryview) -> bool:
        """Send all of ``data``; False if woken first (then it may be partly sent)."""

    def wake(self) -> None:
        """End the current wait, and every later one at once (any task may call this)."""

    def stream(self) -> trio.abc.Stream:
        """The connection as a trio stream, to wrap in TLS; this transport is then done."""

    async def aclose(self) -> None:
        """Close the connection (without waiting on a client that does not read)."""


class SocketTransport:
    """A non-blocking plain socket, its calls tried before any wait."""

    __slots__ = ("_fd", "_sock", "_waiting", "woken")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._waiting = False
        self.woken = False

    async def receive(self, max_bytes: int, *, wait_first: bool = False
                      ) -> bytes | None:
        sock = self._sock
        waited = False
        if wait_first and not self.woken:
            if not await self._wait(trio.lowlevel.wait_readable):
                return None
            waited = True
        while not self.woken:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise TransportError(exc) from exc
            else:
                if not waited:
                    # The bytes were there already: let the other connections run too.
                    await trio.lowlevel.checkpoint()
                return data
            if not await self._wait(trio.lowlevel.wait_readable):
                break
            waited = True
        return None

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
            # Once woken, a last word (421) is only sent if it fits without waiting.
            if view and (self.woken or not await self._wait(trio.lowlevel.wait_writable)):
                return False
        return True

    async def _wait(self, wait: _Wait) -> bool:
        self._waiting = True
        try:
            await wait(self._fd)
        except trio.ClosedResourceError:
            # notify_closing() from wake(); anything else closing our socket is a bug.
            if not self.woken:
                raise
        finally:
            self._waiting = False
        return not self.woken

    def wake(self) -> None:
        if self.woken:
            return
        self.woken = True
        if self._waiting:
            trio.lowlevel.notify_closing(self._fd)

    def stream(self) -> trio.abc.Stream:
        return trio.SocketStream(trio.socket.from_stdlib_socket(self._sock))

    async def aclose(self) -> None:
        if self._waiting:  # only if another task closes us while we wait: wake it first
            trio.lowlevel.notify_closing(self._fd)
        self._sock.close()


class _Wait(Protocol):
    async def __call__(self, fd: int, /) -> None: ...


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

    def stream(self) -> trio.abc.Stream:
        return self._stream

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope, contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)


def transport_for(stream: trio.abc.Stream) -> Transport:
    """The fastest transport for an accepted stream: a trio.SocketStream gives up its
    socket to a ``SocketTransport``; any other stream is carried as it is."""
    if type(stream) is trio.SocketStream:
        sock = stream.socket
        family, kind, proto = sock.family, sock.type, sock.proto
        # detach() hands the descriptor over; trio's wrapper is never used again.
        return SocketTransport(socket.socket(family, kind, proto, fileno=sock.detach()))
    return StreamTransport(stream)
