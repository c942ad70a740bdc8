"""The accept loop: connections from a listener, and what to do when ``accept()`` fails.

Some failures belong to one connection, which was gone before we took it (trio's list:
ECONNABORTED, EPROTO, EPERM from a firewall, ECONNRESET...): ignore them. Some mean the
system is short of descriptors or memory: pause, so that the connections we hold can
finish and free some. A closed listener ends the loop. Anything else is a bug to raise.
Windows reports the same conditions with its own WSA codes, tabled here alongside.

A ``trio.SocketListener`` on the fast path is accepted from directly (``SocketAcceptor``):
every pending connection is taken as a plain socket in one go, without the two checkpoints
and the ``SocketStream`` wrapper per connection that ``SocketListener.accept()`` makes and
the session would unwrap again. Any other listener goes through its ``accept()``.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = ["AcceptError", "Acceptor", "ListenerAcceptor", "SocketAcceptor", "accept_loop",
           "classify"]

log = logging.getLogger("trio_smtpd")

# Accepts in a row before letting other tasks run, when connections keep arriving.
_BATCH = 64
_PAUSE = 0.1


class AcceptError(enum.Enum):
    IGNORE = "the connection was gone before we took it"
    PAUSE = "out of descriptors or memory"
    STOP = "the listener is closed"
    RAISE = "unexpected"


def _codes(*names: str) -> set[int]:
    return {getattr(errno, name) for name in names if hasattr(errno, name)}


_PER_CONNECTION = _codes("ECONNABORTED", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT",
                         "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH",
                         "ENOSR", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT", "ETIMEDOUT",
                         "ECONNRESET")
_RESOURCES = _codes("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
_CLOSED = _codes("EBADF", "EINVAL", "ENOTSOCK")
# Windows Sockets codes (winerror), stable numbers from winsock2.h.
_WSA = {10053: AcceptError.IGNORE,  # WSAECONNABORTED
        10054: AcceptError.IGNORE,  # WSAECONNRESET
        10050: AcceptError.IGNORE,  # WSAENETDOWN
        10051: AcceptError.IGNORE,  # WSAENETUNREACH
        10060: AcceptError.IGNORE,  # WSAETIMEDOUT
        10065: AcceptError.IGNORE,  # WSAEHOSTUNREACH
        10024: AcceptError.PAUSE,  # WSAEMFILE
        10055: AcceptError.PAUSE,  # WSAENOBUFS
        10009: AcceptError.STOP,  # WSAEBADF
        10022: AcceptError.STOP,  # WSAEINVAL
        10038: AcceptError.STOP}  # WSAENOTSOCK


def classify(exc: OSError) -> AcceptError:
    """What an ``accept()`` failure means for the accept loop."""
    winerror = getattr(exc, "winerror", None)
    code = winerror if isinstance(winerror, int) else exc.errno
    if code in _WSA:
        return _WSA[code]
    if code in _PER_CONNECTION:
        return AcceptError.IGNORE
    if code in _RESOURCES:
        return AcceptError.PAUSE
    if code in _CLOSED:
        return AcceptError.STOP
    return AcceptError.RAISE


Accepted = trio.abc.Stream | tuple[socket.socket, object, object]


class Acceptor(Protocol):
    async def accept(self) -> Accepted | None:
        """The next connection; None once the listener is closed."""


class ListenerAcceptor:
    """Any ``trio.abc.Listener``: its streams."""

    def __init__(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        self._listener = listener

    async def accept(self) -> Accepted | None:
        try:
            return await self._listener.accept()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return None


class SocketAcceptor:
    """A ``trio.SocketListener``'s socket, accepted from directly: ``(sock, peer, local)``.

    The listener keeps owning its socket; we borrow its descriptor through a socket object
    that is detached, never closed (``close()``). Closing the listener wakes our wait
    (trio calls ``notify_closing``), and its descriptor is checked before each accept, so
    a closed listener's number, reused by another socket, is never touched.
    """

    def __init__(self, listener: trio.SocketListener) -> None:
        listening = listener.socket
        self._listening = listening
        self._fd = listening.fileno()
        self._borrowed = socket.socket(listening.family, listening.type, listening.proto,
                                       fileno=self._fd)
        self._tcp = listening.family in (socket.AF_INET, socket.AF_INET6)
        # Every connection to a listener on one address has that local address (not so
        # on a wildcard address).
        local = listening.getsockname() if self._tcp else None
        wildcard = local is not None and ipaddress.ip_address(local[0]).is_unspecified
        self._local = None if wildcard else local

    async def accept(self) -> Accepted | None:
        while True:
            if self._listening.fileno() != self._fd:  # closed while we were elsewhere
                return None
            try:
                sock, peer = self._borrowed.accept()
            except BlockingIOError:
                if not await self._wait():
                    return None
                continue
            return self._taken(sock, peer)

    def close(self) -> None:
        self._borrowed.detach()

    async def _wait(self) -> bool:
        try:
            await trio.lowlevel.wait_readable(self._fd)
        except trio.ClosedResourceError:
            return False
        return True

    def _taken(self, sock: socket.socket, peer: object) -> Accepted:
        if self._tcp:
            # As trio.SocketStream does: replies go out at once, not after an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, peer, self._local


async def accept_loop(acceptor: Acceptor, spawn: Callable[[Accepted], None]) -> None:
    """Accept until the listener closes, calling ``spawn`` for each connection."""
    in_a_row = 0
    while True:
        try:
            accepted = await acceptor.accept()
        except OSError as exc:
            action = classify(exc)
            if action is AcceptError.IGNORE:
                log.debug("accept failed (%s): %s; ignored", exc, action.value)
                continue
            if action is AcceptError.PAUSE:
                log.error("accept failed (%s): %s; pausing", exc, action.value)
                await trio.sleep(_PAUSE)
                continue
            if action is AcceptError.STOP:
                return
            raise
        if accepted is None:
            return
        spawn(accepted)
        in_a_row += 1
        if in_a_row >= _BATCH:  # connections keep coming: let the others run too
            in_a_row = 0
            await trio.lowlevel.checkpoint()
