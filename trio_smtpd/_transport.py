"""A client connection's bytes, each call bounded by a deadline on trio's clock.

``Transport`` is what a session needs: ``receive(max_bytes, deadline)`` gives bytes,
``EOF``, ``TIMEOUT`` (the deadline passed first) or ``WOKEN`` (``wake()`` ended the wait,
at shutdown); ``send(data, deadline)`` says whether everything went out in time. Errors of
the connection itself (reset, broken pipe, TLS alerts) raise ``TransportError``.

``StreamTransport`` carries any ``trio.abc.Stream``, each call in its own cancel scope:
TLS (``trio.SSLStream``), in-memory streams, streams from listeners of the application's
own, and ``trio.SocketStream`` itself, the portable reference path. Plain TCP and Unix
sockets on the default fast path use ``SocketTransport`` (``_socket_transport.py``).
"""

from __future__ import annotations

import contextlib
import enum
import ssl
from typing import Protocol

import trio

__all__ = ["EOF", "TIMEOUT", "WOKEN", "Outcome", "StreamTransport", "Transport",
           "TransportError"]


class Outcome(enum.Enum):
    """How a wait ended, when it did not end with bytes."""

    EOF = "end of file"
    TIMEOUT = "timeout"
    WOKEN = "woken"


EOF, TIMEOUT, WOKEN = Outcome.EOF, Outcome.TIMEOUT, Outcome.WOKEN


class TransportError(Exception):
    """The connection broke (reset, broken pipe, TLS error...); its cause is chained."""


class Transport(Protocol):
    async def receive(self, max_bytes: int, deadline: float,
                      expect_wait: bool = False) -> bytes | Outcome:
        """Bytes from the client, or how the wait for them ended instead. With
        ``expect_wait`` (the client has just been answered and must read that before it
        says more), a transport may wait before trying to read. A ``deadline`` that has
        passed already may end the wait a moment later rather than at once (the caller
        knows the time: it does not call with one)."""

    async def send(self, data: bytes | memoryview, deadline: float) -> bool:
        """Send all of ``data``; False if the deadline passed first."""

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        """Send what goes without waiting; return the rest (empty if all went). An error
        is left for ``send()`` to raise."""

    def wake(self) -> None:
        """End the current ``receive()`` with ``WOKEN`` (from any task); the session
        then closes the connection."""

    def stream(self) -> trio.abc.Stream:
        """The connection as a trio stream, to wrap in TLS; this transport is then done."""

    async def aclose(self) -> None:
        """Close the connection, without waiting long on a client that does not read."""


_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError)


class StreamTransport:
    """Any trio stream; each wait is a cancel scope with the call's deadline."""

    __slots__ = ("_receiving", "_stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._receiving: trio.CancelScope | None = None

    async def receive(self, max_bytes: int, deadline: float,
                      expect_wait: bool = False) -> bytes | Outcome:
        with trio.move_on_at(deadline) as self._receiving:
            try:
                data = await self._stream.receive_some(max_bytes)
            except _STREAM_ERRORS as exc:
                raise TransportError(exc) from exc
            finally:
                self._receiving = None
            return bytes(data) if data else EOF
        return TIMEOUT if trio.current_time() >= deadline else WOKEN

    async def send(self, data: bytes | memoryview, deadline: float) -> bool:
        with trio.move_on_at(deadline):
            try:
                await self._stream.send_all(data)
            except _STREAM_ERRORS as exc:
                raise TransportError(exc) from exc
            return True
        return False

    def send_nowait(self, data: bytes) -> bytes | memoryview:
        return data  # a stream has no way to try without waiting

    def wake(self) -> None:
        if self._receiving is not None:
            self._receiving.cancel()

    def stream(self) -> trio.abc.Stream:
        return self._stream

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope, contextlib.suppress(*_STREAM_ERRORS):
            await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)
