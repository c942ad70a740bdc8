"""Some of the library's free-text log messages, turned into structured events.

The library reports a failed TLS handshake, a failed AUTH and a connection refused over
the limits as plain log messages that name a session id but not the client, e.g.
``session 3e10.1: AUTH LOGIN failed for 'alice'``. A log reader (fail2ban) wants the
client's address on one line. This filter, on the handler of the library's logger,
recognises those messages by their format string and replaces each with:

* ``tls-failed`` (``session``, ``peer``, ``ip``, ``during``: ``starttls`` or ``connect``
  for an implicit-TLS listener, ``reason``): one line per failed handshake;
* for a failed or malformed AUTH, nothing of its own: the user name and mechanism (or
  what was malformed) join the ``refused`` line of the 535 or 501 reply that follows
  (:mod:`.watch`), so that each refusal is one line;
* ``refused`` with ``command=CONNECT`` for a connection refused over the connection
  limits (421).

Who the client is comes from the running task: the session's :class:`.watch.SessionWatch`
(set in the handler's task), or, before any session exists (an implicit-TLS handshake),
the address :class:`PeerNotingListener` noted when it accepted the connection: trio
copies the accepting task's context into the connection's task. Messages this module
does not know pass through unchanged.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import trio

from .logs import log_event
from .watch import CURRENT

__all__ = ["ACCEPTED_PEER", "PeerNotingListener", "install"]

#: The client address of the connection being accepted, for its task to inherit.
ACCEPTED_PEER: ContextVar[tuple[str, int] | None] = ContextVar(
    "trio_smtpd_sinkhole_accepted_peer", default=None)

# The library's messages (trio_smtpd/_tls.py, _authflow.py, _server.py).
_TLS_FAILED = "session %s: TLS handshake failed: %r"
_TLS_TIMED_OUT = "session %s: TLS handshake timed out"
_AUTH_FAILED = "session %s: AUTH %s failed for %r"
_AUTH_MALFORMED = "session %s: malformed AUTH exchange: %s"
_CONNECTION_REFUSED = "refused a connection from %s: %s"
_SOURCE_LINE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class PeerNotingListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose ``accept()`` notes the client's address in the accepting task's
    context, for the connection's task to inherit (see the module docstring)."""

    def __init__(self, listener: trio.SocketListener) -> None:
        #: (The name ``Server.port`` looks for.)
        self.transport_listener = listener

    async def accept(self) -> trio.abc.Stream:
        stream = await self.transport_listener.accept()
        try:
            peer = stream.socket.getpeername()
        except OSError:
            peer = None
        ACCEPTED_PEER.set((str(peer[0]), int(peer[1])) if peer else None)
        return stream

    async def aclose(self) -> None:
        await self.transport_listener.aclose()


def _tls_failed(args: tuple[Any, ...]) -> None:
    session_id, error = args
    _tls_event(session_id, _reason(error))


def _tls_timed_out(args: tuple[Any, ...]) -> None:
    _tls_event(args[0], "the handshake timed out")


def _tls_event(session_id: str, reason: str) -> None:
    watch = CURRENT.get()
    if watch is not None and watch.session_id == session_id:
        peer, during = watch.peer, "starttls"
    else:
        peer, during = ACCEPTED_PEER.get(), "connect"
    log_event("tls-failed", session=session_id,
              peer=None if peer is None else f"{peer[0]}:{peer[1]}",
              ip=None if peer is None else peer[0], during=during, reason=reason)


def _reason(error: object) -> str:
    """What went wrong, in a few words: the SSL error, or how the connection broke."""
    cause = error
    if isinstance(error, trio.BrokenResourceError) and error.__cause__ is not None:
        cause = error.__cause__
    if isinstance(cause, ssl.SSLError):
        return _SOURCE_LINE.sub("", str(cause)) or type(cause).__name__
    if isinstance(cause, trio.BrokenResourceError | ConnectionError | EOFError):
        return "the client closed the connection during the handshake"
    return f"{type(cause).__name__}: {cause}".rstrip(": ")


def _auth_failed(args: tuple[Any, ...]) -> None:
    session_id, mechanism, user = args
    watch = CURRENT.get()
    if watch is not None and watch.session_id == session_id:
        watch.auth = (str(mechanism), str(user))


def _auth_malformed(args: tuple[Any, ...]) -> None:
    session_id, reason = args
    watch = CURRENT.get()
    if watch is not None and watch.session_id == session_id:
        watch.auth, watch.auth_detail = (None, None), str(reason)


def _connection_refused(args: tuple[Any, ...]) -> None:
    peer, reason = args
    address = peer if isinstance(peer, tuple) and len(peer) >= 2 else None
    log_event("refused", session=None,
              peer=None if address is None else f"{address[0]}:{address[1]}",
              ip=None if address is None else address[0], command="CONNECT", code=421,
              enhanced="4.7.0", reason=str(reason))


_EVENTS: dict[str, Callable[[tuple[Any, ...]], None]] = {
    _TLS_FAILED: _tls_failed, _TLS_TIMED_OUT: _tls_timed_out, _AUTH_FAILED: _auth_failed,
    _AUTH_MALFORMED: _auth_malformed, _CONNECTION_REFUSED: _connection_refused}


class _LibraryEvents(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        event = _EVENTS.get(record.msg) if isinstance(record.msg, str) else None
        if event is None or not isinstance(record.args, tuple):
            return True
        try:
            event(record.args)
        except (TypeError, ValueError):
            return True  # not the shape we know: let the message through as it is
        return False


def install(logger: str = "trio_smtpd") -> None:
    """Filter the library's messages on every handler of ``logger`` (once each)."""
    for handler in logging.getLogger(logger).handlers:
        if not any(isinstance(f, _LibraryEvents) for f in handler.filters):
            handler.addFilter(_LibraryEvents())
