"""Accepting connections on a ``trio.SocketListener`` without trio's per-connection wrappers.

``SocketListener.accept()`` yields to the scheduler twice per connection and wraps each
socket in a trio socket and a ``SocketStream`` (two more system calls), which the session
would unwrap again at once. Here the listening socket is waited on with
``wait_readable`` and every pending connection is taken in one go, as a plain socket for
``SocketTransport``.

The listener keeps owning its socket: we borrow its descriptor through a socket object of
our own that is detached, never closed, when we stop. Closing the listener wakes our wait
(trio calls ``notify_closing``), and its descriptor is checked before each ``accept()``,
so a closed listener's number, reused by another socket, is never touched.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable

import trio

__all__ = ["RESOURCE_ERRORS", "accept_sockets"]

log = logging.getLogger("trio_smtpd")

# Accepts in a row before letting other tasks run, when connections keep arriving.
_BATCH = 64
# accept() failures that pass once the system has descriptors or memory again.
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


async def accept_sockets(listener: trio.SocketListener,
                         spawn: Callable[[socket.socket, object, object], None]) -> None:
    """Accept until the listener is closed, calling ``spawn(sock, peer, local)`` with the
    addresses (``local`` is None when the listener is on a wildcard address)."""
    listening = listener.socket
    fd = listening.fileno()
    borrowed = socket.socket(listening.family, listening.type, listening.proto, fileno=fd)
    tcp = listening.family in (socket.AF_INET, socket.AF_INET6)
    # Every connection to a listener on one address has that local address: no need to
    # ask the system each time (a wildcard listener's connections each have their own).
    local = listening.getsockname() if tcp else None
    if local is not None and ipaddress.ip_address(local[0]).is_unspecified:
        local = None
    try:
        while True:
            for _ in range(_BATCH):
                if listening.fileno() != fd:  # closed while we were elsewhere
                    return
                try:
                    sock, peer = borrowed.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in RESOURCE_ERRORS:
                        log.error("accept failed (%s); pausing", exc)
                        await trio.sleep(0.1)
                        break
                    if exc.errno in (errno.EBADF, errno.EINVAL):
                        return
                    raise
                if tcp:
                    # As trio.SocketStream does: replies go out at once, not after an ACK.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                spawn(sock, peer, local)
            else:
                await trio.lowlevel.checkpoint()
                continue
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                return
    finally:
        borrowed.detach()
