"""The library's security events, written as the sinkhole's own log lines.

The library logs a failed TLS handshake, a failed AUTH and a connection refused by a
limit as readable text, and each such ``LogRecord`` carries ``smtp_event`` and ``smtp``,
the event's fields (docs/server.md, "Logging"). A filter on the handler of the library's
logger reads those fields (never the text) and writes instead:

* ``tls_failed``: a ``tls-failed`` line (``session``, ``peer``, ``ip``, ``during``:
  ``starttls``, or ``connect`` for an implicit-TLS listener, ``reason``: the library's
  kind of failure, ``detail``: OpenSSL's word for it, ``after_hello``: whether the
  client's ClientHello had arrived);
* ``auth_failed``: no line of its own: the mechanism and the user name the client gave
  (and a ``detail`` saying why, unless the credentials were simply wrong: a malformed
  exchange, an authenticator that failed) join the ``refused`` line of the reply that
  follows (:mod:`.watch`), so that each refusal is one line;
* ``connection_refused``: a ``refused`` line with ``command=CONNECT``, the reply the
  client got and the ``limit`` that refused it.

Records without ``smtp_event`` pass through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .._limits import TOO_FAST, TOO_MANY, TOO_MANY_FROM_YOU
from .._replies import Reply
from .logs import log_event
from .records import peer_text
from .watch import watch_of

__all__ = ["install"]

#: What the library answers each limit with (``connection_refused``'s ``limit``).
_LIMIT_REPLIES = {"max_connections": TOO_MANY, "max_connections_per_ip": TOO_MANY_FROM_YOU,
                  "max_connection_rate": TOO_FAST}
_OTHER_LIMIT = Reply(421, "Too many connections", "4.7.0")  # (a limit added later)
_DURING = {"starttls": "starttls", "implicit": "connect"}


def _ip(peer: tuple[str, int] | None) -> str | None:
    return None if peer is None else peer[0]


def _tls_failed(fields: Mapping[str, Any]) -> bool:
    peer = fields["peer"]
    log_event("tls-failed", session=fields["session"], peer=peer_text(peer), ip=_ip(peer),
              during=_DURING.get(fields["mode"], fields["mode"]), reason=fields["reason"],
              detail=fields["detail"], after_hello=fields["after_hello"])
    return True


def _auth_failed(fields: Mapping[str, Any]) -> bool:
    watch = watch_of(fields["session"])
    if watch is None:  # (no session of ours to join it to: the library's line stays)
        return False
    # A 535 means wrong credentials, as its reply says; another code (501 malformed, 454
    # the authenticator failed or was late) gets the library's reason for it.
    watch.auth_failed(fields["mechanism"], fields["user"],
                      None if fields["code"] == 535 else fields["reason"])
    return True


def _connection_refused(fields: Mapping[str, Any]) -> bool:
    peer, limit = fields["peer"], fields["limit"]
    reply = _LIMIT_REPLIES.get(limit, _OTHER_LIMIT)
    log_event("refused", session=None, peer=peer_text(peer), ip=_ip(peer),
              command="CONNECT", code=reply.code, enhanced=reply.enhanced,
              reason=reply.text, limit=limit)
    return True


#: Each returns True once it has written (or joined) the event: the library's own text
#: is then dropped, so that every event is one line.
_EVENTS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "tls_failed": _tls_failed, "auth_failed": _auth_failed,
    "connection_refused": _connection_refused}


class _LibraryEvents(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        event = _EVENTS.get(getattr(record, "smtp_event", None) or "")
        fields = getattr(record, "smtp", None)
        if event is None or not isinstance(fields, Mapping):
            return True
        try:
            return not event(fields)
        except (KeyError, TypeError, IndexError):
            # Not the shape documented: the library's own line is better than none (a
            # filter that raised would fail the library's call instead).
            return True


def install(logger: str = "trio_smtpd") -> None:
    """Filter the library's records on every handler of ``logger`` (once each)."""
    for handler in logging.getLogger(logger).handlers:
        if not any(isinstance(f, _LibraryEvents) for f in handler.filters):
            handler.addFilter(_LibraryEvents())
