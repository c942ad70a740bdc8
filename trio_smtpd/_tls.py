"""TLS for the server: the handshake with its deadline, and what it negotiated."""

from __future__ import annotations

import logging
import ssl

import trio

from ._certificates import server_end_point, subject_text
from ._info import TLSInfo
from ._metrics import Metrics, handshake_failure
from ._tlsfailure import TLSFailure, classify

__all__ = ["handshake", "record_server_names", "tls_info"]

log = logging.getLogger("trio_smtpd")

SNI_ATTRIBUTE = "trio_smtpd_server_name"


async def handshake(stream: trio.SSLStream[trio.abc.Stream], timeout: float,
                    session_id: str, metrics: Metrics | None = None,
                    mode: str = "starttls") -> TLSFailure | None:
    """Do a server-side TLS handshake; a failure is logged and returned (and either way,
    reported to ``metrics``)."""
    with trio.move_on_after(timeout):
        try:
            await stream.do_handshake()
            if metrics is not None:
                metrics.tls_handshake(mode, stream.version(), None)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            failure = classify(exc)
            log.info("session %s: TLS handshake failed (%s): %r", session_id,
                     failure.reason, exc)
            if metrics is not None:
                metrics.tls_handshake(mode, None, handshake_failure(exc.__cause__ or exc))
            return failure
    log.info("session %s: TLS handshake timed out", session_id)
    if metrics is not None:
        metrics.tls_handshake(mode, None, "timeout")
    return classify(None)


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
    """Make ``context`` note each client's SNI name, keeping any callback it had."""
    previous = context.sni_callback
    if getattr(previous, SNI_ATTRIBUTE, False):
        return  # already wrapped (the context serves more than one server)

    def callback(ssl_object: ssl.SSLObject, server_name: str,
                 ssl_context: ssl.SSLContext) -> int | None:
        # (typeshed says str; a client that sends no SNI gives None, recorded as such)
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        return previous(ssl_object, server_name, ssl_context) if previous else None

    setattr(callback, SNI_ATTRIBUTE, True)
    context.sni_callback = callback
