"""TLS for the server: the handshake with its deadline, and what it negotiated.

A failed handshake is one of two kinds, and they mean different things: a client whose
ClientHello arrived and then failed (its TLS cannot work with ours, and it may be worth
offering it plaintext, as the sinkhole's ``--tls-fallback`` does), or a connection that
ended before any ClientHello (the client gave up, or someone on the path cut it: no reason
to believe anything about the client's TLS). ``SessionInfo.tls_failed_after_hello`` tells
the first kind: the SNI callback, which sees the ClientHello arrive, marks the handshake
under way, found through a context variable of the task doing it (the SSL object passes
nothing else through).

CPython decodes a client's SNI name before it calls the context's ``sni_callback`` and,
when the name is not ASCII, prints a traceback on stderr and fails the handshake. The
server logs one line instead: see ``record_server_names``.
"""

from __future__ import annotations

import contextvars
import logging
import ssl
import sys
from typing import Any

import trio

from ._certificates import server_end_point, subject_text
from ._info import SessionInfo, TLSInfo
from ._metrics import Metrics, handshake_failure
from ._securitylog import format_peer, log_security_event
from ._tlsfailure import TLSFailure, classify

__all__ = ["handshake", "record_server_names", "tls_info"]

log = logging.getLogger("trio_smtpd")

SNI_ATTRIBUTE = "trio_smtpd_server_name"
_HOOK_ATTRIBUTE = "trio_smtpd_sni_filter"


class _Attempt:
    """One handshake under way: has the client's ClientHello arrived?"""

    __slots__ = ("hello",)

    def __init__(self) -> None:
        self.hello = False


_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "trio_smtpd_tls_attempt", default=None)
async def handshake(stream: trio.SSLStream[trio.abc.Stream], timeout: float,
                    info: SessionInfo, metrics: Metrics | None = None,
                    mode: str = "starttls") -> TLSFailure | None:
    """Do a server-side TLS handshake for the connection ``info``; a failure is logged,
    noted in ``info`` and returned (and either way, reported to ``metrics``)."""
    attempt = _Attempt()
    token = _attempt.set(attempt)
    try:
        with trio.move_on_after(timeout):
            try:
                await stream.do_handshake()
                if metrics is not None:
                    metrics.tls_handshake(mode, stream.version(), None)
                return None
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                failure = classify(exc)
                _failed(attempt, failure, info, mode)
                if metrics is not None:
                    metrics.tls_handshake(mode, None, handshake_failure(exc.__cause__ or exc))
                return failure
        failure = classify(None)
        _failed(attempt, failure, info, mode)
        if metrics is not None:
            metrics.tls_handshake(mode, None, "timeout")
        return failure
    finally:
        _attempt.reset(token)


def _failed(attempt: _Attempt, failure: TLSFailure, info: SessionInfo, mode: str) -> None:
    """Log the failure, and note in the session whether a ClientHello had come."""
    if attempt.hello:
        info.tls_failed_after_hello = True
    stage = "after the ClientHello" if attempt.hello else "before any ClientHello"
    log_security_event("tls_failed", "session %s: TLS handshake with %s failed %s (%s): %s",
                       info.id, format_peer(info.peer), stage, failure.reason,
                       failure.detail, session=info.id, peer=info.peer, mode=mode,
                       reason=failure.reason, detail=failure.detail,
                       after_hello=attempt.hello)


def tls_info(stream: trio.SSLStream[trio.abc.Stream]) -> TLSInfo:
    cipher = stream.cipher()
    cert = stream.getpeercert()
    # trio keeps its SSLObject private; record_server_names() marked it during the
    # handshake, so read it defensively (None if trio ever renames it).
    ssl_object = getattr(stream, "_ssl_object", None)
    server_name = getattr(ssl_object, SNI_ATTRIBUTE, None)
    version = stream.version()
    return TLSInfo(version=version, cipher=cipher[0] if cipher else None,
                   peer_certificate=dict(cert) if cert else None,
                   server_name=server_name if isinstance(server_name, str) else None,
                   client_verified=bool(cert), client_subject=subject_text(cert) if cert
                   else None, channel_bindings=_channel_bindings(stream, version))


def _channel_bindings(stream: trio.SSLStream[trio.abc.Stream],
                      version: str | None) -> dict[str, bytes]:
    bindings = {}
    # (the context that served the connection: an SNI callback may have switched it)
    end_point = server_end_point(stream.context)
    if end_point is not None:
        bindings["tls-server-end-point"] = end_point
    if version == "TLSv1.2":  # RFC 9266: never tls-unique with TLS 1.3
        unique = stream.get_channel_binding("tls-unique")
        if unique:
            bindings["tls-unique"] = unique
    return bindings


def record_server_names(context: ssl.SSLContext) -> None:
    """Make ``context`` note each client's SNI name, keeping any callback it had.

    The callback also marks the handshake under way as past its ClientHello (CPython
    calls it for every ClientHello, with None when there is no SNI). A callback of the
    application's that raises fails that handshake with a log line, not a traceback; so
    does a name CPython cannot decode (see ``_filter_bad_server_names``).
    """
    _filter_bad_server_names()
    previous = context.sni_callback
    if getattr(previous, SNI_ATTRIBUTE, False):
        return  # already wrapped (the context serves more than one server)

    def callback(ssl_object: ssl.SSLObject, server_name: str,
                 ssl_context: ssl.SSLContext) -> int | None:
        attempt = _attempt.get()
        if attempt is not None:
            attempt.hello = True
        # (typeshed says str; a client that sends no SNI gives None, recorded as such)
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        if previous is None:
            return None
        try:
            return previous(ssl_object, server_name, ssl_context)
        except Exception as exc:
            log.warning("TLS: the SNI callback failed for %r: %r", server_name, exc)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR

    setattr(callback, SNI_ATTRIBUTE, True)
    context.sni_callback = callback


def _filter_bad_server_names() -> None:
    """Log, rather than print a traceback for, an SNI name CPython cannot decode.

    CPython reports that error through ``sys.unraisablehook`` from inside our handshake;
    this hook (installed once per process, in front of whatever hook was there) takes
    only such errors, raised while one of our handshakes runs, and passes anything else
    on untouched.
    """
    previous = sys.unraisablehook
    if getattr(previous, _HOOK_ATTRIBUTE, False):
        return

    def hook(unraisable: Any) -> None:
        attempt = _attempt.get()
        if (attempt is None or not isinstance(unraisable.exc_value, UnicodeError)
                or not isinstance(unraisable.object, bytes)):
            previous(unraisable)
            return
        attempt.hello = True  # it was in the ClientHello
        log.info("TLS: a client asked for a server name (SNI) that is not ASCII: %r; "
                 "handshake refused", unraisable.object[:255])

    setattr(hook, _HOOK_ATTRIBUTE, True)
    sys.unraisablehook = hook
