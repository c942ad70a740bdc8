"""What a server counts for the application: ``Config(metrics=...)``.

The library depends on no metrics package. It calls the methods of a ``Metrics`` the
application gives it, at the moments an operator wants counted (a connection accepted or
refused by a limit, a session over, a TLS handshake, an AUTH verdict, every refusal, a
transaction's outcome); the application turns them into counters of its choice (the
sinkhole uses prometheus-client). Without one, nothing here runs: each place that
reports is behind one ``if metrics is not None``, and none is on the per-command path.
With one, refusals are heard through the protocol engine's observer slot (see
``_observer.py``), so a command costs two empty calls more, and nothing else.
"""

from __future__ import annotations

import ssl

from ._limits import TOO_FAST, TOO_MANY, TOO_MANY_FROM_YOU
from ._observer import Observer
from ._replies import Reply
from ._transaction import Transaction

__all__ = ["Metrics", "counting_observer", "handshake_failure", "inner_observer",
           "limit_name", "transaction_outcome"]


class Metrics:
    """Counts what a server does. Subclass it, override the methods you want counted and
    give an instance as ``Config(metrics=...)``; the others do nothing.

    Each method is called synchronously by the server, in its trio thread: it must be
    quick (increment a counter) and must not raise. Labels are from small fixed sets,
    safe for a metrics system: no addresses, no client text.
    """

    def connection_accepted(self) -> None:
        """A connection was accepted and counted against the connection limits."""

    def connection_refused(self, limit: str) -> None:
        """A connection was refused (421) by a limit: ``"max_connections"``,
        ``"max_connections_per_ip"`` (a PROXY-protocol client's address, once known) or
        ``"max_connection_rate"``."""

    def session_closed(self, outcome: str, seconds: float) -> None:
        """An accepted connection is over, after ``seconds``. ``outcome``: ``"quit"``,
        ``"disconnected"`` (no QUIT), ``"timeout"``, ``"shutdown"``, ``"refused"`` (the
        application said 421), ``"too_many_errors"``, ``"auth_failures"``,
        ``"tls_failed"``, ``"proxy_error"``, ``"send_failed"`` (the client stopped
        reading) or ``"error"`` (the server's or the application's)."""

    def tls_handshake(self, mode: str, version: str | None, failure: str | None) -> None:
        """A TLS handshake ended (``mode``: ``"starttls"`` or ``"implicit"``): with
        ``version`` (``"TLSv1.3"``...) or a ``failure``, ``"timeout"``, ``"eof"`` (the
        client went away) or OpenSSL's reason in lower case (``"no_shared_cipher"``,
        ``"wrong_version_number"``...)."""

    def auth(self, mechanism: str, result: str) -> None:
        """An AUTH exchange ended. ``result``: ``"success"``, ``"invalid"`` (the
        authenticator said no), ``"refused"`` (the application rejected what the
        authenticator accepted), ``"malformed"``, ``"error"`` (the authenticator raised)
        or ``"timeout"``. AUTH commands the engine refused (no TLS yet, an unknown
        mechanism) are only ``refused()``."""

    def refused(self, command: str, reply: Reply) -> None:
        """Any 4xx or 5xx reply, the engine's or the application's, and the verb it
        answers (``"CONNECT"`` for the greeting, ``""`` for an unprompted 421)."""

    def transaction(self, transaction: Transaction, outcome: str) -> None:
        """A transaction that reached its data is over. ``outcome``: ``"accepted"``,
        ``"rejected"``, ``"tempfailed"``, ``"partial"`` (LMTP, answers of more than one
        kind: see ``transaction.replies``) or ``"aborted"`` (the engine refused the
        body, ``transaction.abort_reply`` says how, or the client left)."""


class _Refusals:
    """The engine's observer when only the metrics listen: refusals go to ``metrics``."""

    __slots__ = ("metrics", "wants_data")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.wants_data = False

    def received(self, line: str) -> None:
        pass

    def data(self, chunk: bytes) -> None:
        pass

    def sent(self, reply: bytes) -> None:
        pass

    def refused(self, command: str, reply: Reply) -> None:
        self.metrics.refused(command, reply)


class _Both(_Refusals):
    """The engine's observer when the application watches too: it hears everything."""

    __slots__ = ("inner",)

    def __init__(self, metrics: Metrics, inner: Observer) -> None:
        super().__init__(metrics)
        self.inner = inner
        self.wants_data = inner.wants_data

    def received(self, line: str) -> None:
        self.inner.received(line)

    def data(self, chunk: bytes) -> None:
        self.inner.data(chunk)

    def sent(self, reply: bytes) -> None:
        self.inner.sent(reply)

    def refused(self, command: str, reply: Reply) -> None:
        self.metrics.refused(command, reply)
        self.inner.refused(command, reply)


def counting_observer(metrics: Metrics, inner: Observer | None) -> Observer:
    """The engine's observer: ``inner`` (the application's, if any) and the metrics."""
    return _Refusals(metrics) if inner is None else _Both(metrics, inner)


def inner_observer(observer: Observer | None) -> Observer | None:
    """The application's observer, from what the engine holds."""
    if isinstance(observer, _Both):
        return observer.inner
    return None if isinstance(observer, _Refusals) else observer


def limit_name(refusal: Reply) -> str:
    """Which connection limit ``refusal`` (from ``ConnectionLimits``) stands for."""
    if refusal is TOO_MANY:
        return "max_connections"
    if refusal is TOO_FAST:
        return "max_connection_rate"
    return "max_connections_per_ip" if refusal is TOO_MANY_FROM_YOU else "other"


def handshake_failure(exc: BaseException) -> str:
    """A short, bounded name for why a TLS handshake failed."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        return str(reason).lower() if reason else "ssl_error"
    return "eof"


def transaction_outcome(replies: list[Reply | None]) -> str:
    """accepted, rejected, tempfailed or partial, from the final replies."""
    kinds = {"accepted" if r is None or r.code < 400 else
             "tempfailed" if r.code < 500 else "rejected" for r in replies}
    if len(kinds) == 1:
        return kinds.pop()
    return "partial" if kinds else "accepted"
