"""What is known about a client connection: its addresses, HELO, TLS and AUTH."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    #: True if the client presented a certificate and it verified against the CA bundle
    #: (``Config.client_ca``). A certificate that fails verification ends the handshake.
    client_verified: bool = False
    #: The verified client certificate's subject, as an RFC 4514 string
    #: (``"CN=alice,O=Example"``), or None.
    client_subject: str | None = None
    #: Channel-binding data of this connection (RFC 5929), by type:
    #: ``"tls-server-end-point"`` when the server's certificate is known
    #: (``trio_smtpd.sasl.load_certificate``), ``"tls-unique"`` on TLS 1.2. Python's ssl
    #: module cannot export keying material, so ``"tls-exporter"`` (RFC 9266) is never here.
    channel_bindings: dict[str, bytes] = field(default_factory=dict, repr=False,
                                               compare=False)


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
    #: The attributes of the last XCLIENT command, decoded (``{"ADDR": "192.0.2.7",
    #: ...}``), as a trusted proxy sent them; ``peer``, ``local`` and
    #: ``authenticated_as`` already show them.
    xclient: dict[str, str] | None = None
    #: The proxy that sent XCLIENT (the connection's own peer), once one has.
    proxy: tuple[str, int] | None = None
    #: True once a TLS handshake failed after the client's ClientHello arrived: its TLS
    #: does not work with ours. (A handshake abandoned before any ClientHello, by the
    #: client or by someone on the path, says nothing about the client's TLS.)
    tls_failed_after_hello: bool = False

    def snapshot(self) -> SessionInfo:
        """A copy that later changes to the session (a new HELO, TLS) leave alone."""
        return SessionInfo(self.id, self.peer, self.local, self.lmtp, self.started,
                           self.helo, self.tls, self.authenticated_as, self.xclient,
                           self.proxy, self.tls_failed_after_hello)
