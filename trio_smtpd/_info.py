"""What is known about a client connection: its addresses, HELO, TLS and AUTH."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["SessionInfo", "TLSInfo"]


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated on a TLS connection."""

    #: The protocol version, e.g. ``"TLSv1.3"``.
    version: str | None
    #: The cipher suite's name.
    cipher: str | None
    #: The client certificate as ``ssl.SSLSocket.getpeercert()`` gives it, if one was sent
    #: and the context asked for it.
    peer_certificate: dict[str, object] | None = None
    #: The server name the client asked for (SNI), if it sent one.
    server_name: str | None = None


@dataclass(slots=True)
class SessionInfo:
    """Facts about one client connection, updated as the session goes on."""

    #: Unique within the process: the process id and a counter, in hex and decimal.
    id: str
    #: The client's address, as ``(host, port)``; None for a Unix socket or a stream.
    peer: tuple[str, int] | None
    #: Our address the client connected to.
    local: tuple[str, int] | None
    #: True for an LMTP session.
    lmtp: bool
    #: When the connection was accepted (UTC).
    started: datetime
    #: The name the client gave in its accepted HELO, EHLO or LHLO.
    helo: str | None = None
    #: Set once TLS is active (implicit TLS or STARTTLS).
    tls: TLSInfo | None = None
    #: The identity of a successful AUTH.
    authenticated_as: str | None = None
    #: True once a TLS handshake failed after the client's ClientHello arrived: its TLS
    #: does not work with ours. (A handshake abandoned before any ClientHello, by the
    #: client or by someone on the path, says nothing about the client's TLS.)
    tls_failed_after_hello: bool = False

    def snapshot(self) -> SessionInfo:
        """A copy that later changes to the session (a new HELO, TLS) leave alone."""
        return SessionInfo(self.id, self.peer, self.local, self.lmtp, self.started,
                           self.helo, self.tls, self.authenticated_as,
                           self.tls_failed_after_hello)
