"""TLS for the server: the handshake with its deadline, and what it negotiated."""

from __future__ import annotations

import logging
import ssl

import trio

from ._info import TLSInfo
from ._metrics import Metrics, handshake_failure

__all__ = ["handshake", "record_server_names", "tls_info"]

log = logging.getLogger("trio_smtpd")

SNI_ATTRIBUTE = "trio_smtpd_server_name"


async def handshake(stream: trio.SSLStream[trio.abc.Stream], timeout: float,
                    session_id: str, metrics: Metrics | None = None,
                    mode: str = "starttls") -> bool:
    """Do a server-side TLS handshake; a failure is logged and reported as False (and
    either way, to ``metrics``)."""
    with trio.move_on_after(timeout):
        try:
            await stream.do_handshake()
            if metrics is not None:
                metrics.tls_handshake(mode, stream.version(), None)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            log.info("session %s: TLS handshake failed: %r", session_id, exc)
            if metrics is not None:
                metrics.tls_handshake(mode, None, handshake_failure(exc.__cause__ or exc))
            return False
    log.info("session %s: TLS handshake timed out", session_id)
    if metrics is not None:
        metrics.tls_handshake(mode, None, "timeout")
    return False


def tls_info(stream: trio.SSLStream[trio.abc.Stream]) -> TLSInfo:
    cipher = stream.cipher()
    cert = stream.getpeercert()
    # trio keeps its SSLObject private; record_server_names() marked it during the
    # handshake, so read it defensively (None if trio ever renames it).
    ssl_object = getattr(stream, "_ssl_object", None)
    server_name = getattr(ssl_object, SNI_ATTRIBUTE, None)
    return TLSInfo(version=stream.version(), cipher=cipher[0] if cipher else None,
                   peer_certificate=dict(cert) if cert else None,
                   server_name=server_name if isinstance(server_name, str) else None)


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
