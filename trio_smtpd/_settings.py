"""What a server is told: ``Config`` (limits, TLS, AUTH, the protocol) and ``Timeouts``."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields, replace

from ._certificates import ClientCertificates
from ._config import ProtocolConfig
from ._info import TLSInfo
from ._mechanisms import Mechanism, PasswordMechanism
from ._metrics import Metrics
from ._networks import Network
from ._replies import Reply
from ._sasl import MECHANISMS, Credentials

_LABEL = re.compile(r"\w(?:[\w-]*\w)?")  # letters, digits, "_"; hyphens inside only
_ADDRESS_LITERAL = re.compile(r"\[[^\[\]\s\\]+\]")


def is_server_name(name: str) -> bool:
    """A domain (dot-separated labels; a final dot allowed) or an address literal in
    brackets: what RFC 5321 (4.1.3, 4.2) lets the greeting and the EHLO reply begin with.
    (Underscores too, as real host names have them; a line break would be a reply of
    its own.)"""
    if not 0 < len(name) <= 255:
        return False
    if _ADDRESS_LITERAL.fullmatch(name):
        return True
    return all(len(label) <= 63 and _LABEL.fullmatch(label)
               for label in name.removesuffix(".").split("."))


__all__ = ["Authenticator", "Config", "Timeouts"]

# A TLS connection about which nothing is known: the mechanisms offered on every one.
_ANY_TLS = TLSInfo(version=None, cipher=None)

#: Checks credentials: the authenticated identity, None (535), or a ``Reply`` to refuse
#: with instead (a 454 "try again later", say).
Authenticator = Callable[[Credentials], Awaitable[str | Reply | None]]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every timeout, in seconds, each for one kind of wait.

    A client that misses its deadline is told 421 and disconnected; an application that
    misses its deadline has that decision, and every later one of the session, answered
    with a temporary failure.
    """

    #: Waiting for the next command (RFC 5321 4.5.3.2.7: at least 5 minutes), from the
    #: first byte of its line.
    command: float = 300.0
    #: Waiting for each record of message data (RFC 5321 4.5.3.2.5: 3 minutes), from its
    #: first byte: a line of DATA, or 1000 octets (of a long line, or of a BDAT chunk).
    data_block: float = 180.0
    #: The application deciding about a message; then 451. Well inside the client's
    #: 10-minute wait for that reply (RFC 5321 4.5.3.2.6), so that the 451 reaches it;
    #: the same as ``decision``, so a busy session's deadline need not move per message.
    message_decision: float = 300.0
    #: The application deciding an envelope step (connect, HELO, AUTH, MAIL, RCPT, DATA).
    decision: float = 300.0
    #: A TLS handshake, implicit or after STARTTLS.
    tls_handshake: float = 60.0
    #: Writing replies to a client that does not read them.
    write: float = 300.0
    #: The whole session, whatever it does; None for no cap.
    session: float | None = 3600.0
    #: Graceful shutdown: how long transactions in progress get to finish.
    shutdown_grace: float = 30.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.name == "session":
                continue
            if not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"Timeouts.{item.name} must be a finite number of "
                                 f"seconds, at least 0 (not {value!r})")


@dataclass(frozen=True)
class Config:
    """Everything a server needs; the protocol options are those of ``ProtocolConfig``."""

    #: Our name, in the greeting, the EHLO reply and trace headers.
    hostname: str = field(default_factory=socket.gethostname)
    #: Speak LMTP (RFC 2033) instead of SMTP.
    lmtp: bool = False
    #: Enables STARTTLS (and implicit-TLS listeners).
    tls: ssl.SSLContext | None = None
    #: Checks SASL credentials: returns the authenticated identity, or None to refuse.
    authenticator: Authenticator | None = None
    #: SASL mechanisms offered under TLS, in order: ``"PLAIN"``, ``"LOGIN"`` and
    #: ``"CRAM-MD5"`` (checked by ``authenticator``, offered only if there is one), and
    #: ``trio_smtpd.sasl.Mechanism`` objects (SCRAM-SHA-256, EXTERNAL, OAUTHBEARER...).
    auth_mechanisms: tuple[str | Mechanism, ...] = ("PLAIN", "LOGIN")
    #: Offer and accept AUTH only under TLS (RFC 4954 14); False offers
    #: ``auth_mechanisms`` in cleartext too.
    auth_requires_tls: bool = True
    #: Mechanisms offered before TLS all the same (the Go smtpd's ``Mechanisms``):
    #: nothing by default. Others answer 538 there.
    cleartext_auth_mechanisms: tuple[str | Mechanism, ...] = ()
    #: Ask TLS clients for a certificate: ``"optional"`` or ``"required"`` (the
    #: handshake fails without one), verified against ``client_ca``; the outcome is in
    #: ``TLSInfo.client_verified`` and ``client_subject``. Sets up ``tls`` for that.
    client_certificates: ClientCertificates = "none"
    #: The CA bundle (PEM file) client certificates must chain to.
    client_ca: str | os.PathLike[str] | None = None
    #: Networks (addresses or CIDR) of proxies allowed XCLIENT, such as nginx's mail
    #: proxy; it is offered to them only, and answered 550 for anyone else.
    xclient_trusted: tuple[str, ...] = ()
    #: Refuse MAIL (530) until STARTTLS has completed.
    require_tls: bool = False
    #: Refuse MAIL (530) until AUTH has succeeded (message submission, RFC 6409).
    require_auth: bool = False
    #: Largest message accepted, in octets (advertised as SIZE); None for no limit.
    max_message_size: int | None = 32 * 2**20
    #: Recipients per transaction (RFC 5321 4.5.3.1.8: at least 100); more get 452.
    max_recipients: int = 100
    #: Connections at once; more are answered 421 and closed.
    max_connections: int = 1000
    #: Connections at once from one address; more are answered 421 and closed.
    max_connections_per_ip: int = 50
    #: New connections one address may open per ``connection_rate_period`` seconds
    #: (bursts up to this many); more are answered 421 and closed. None: no limit.
    max_connection_rate: int | None = None
    connection_rate_period: float = 60.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Drive plain TCP and Unix-socket connections as raw non-blocking sockets (the fast
    #: path); False carries them as ``trio.SocketStream`` like any other stream.
    direct_sockets: bool = True
    #: Counts connections, sessions, TLS handshakes, AUTH, refusals and transactions
    #: (see ``Metrics``); None, the default, costs nothing.
    metrics: Metrics | None = field(default=None, compare=False)
    #: Every other protocol option (limits, extensions, bare_line_endings...); the fields
    #: above override the same-named fields of this one.
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    # What is made from the fields above once: the engine's settings, the mechanisms.
    _cache: dict[object, object] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def __post_init__(self) -> None:
        if not is_server_name(self.hostname):
            raise ValueError(f"hostname {self.hostname!r} is not a domain name or an "
                             "address literal (it begins the greeting and every EHLO reply)")
        for entry in (*self.auth_mechanisms, *self.cleartext_auth_mechanisms):
            if isinstance(entry, str) and entry not in MECHANISMS:
                raise ValueError(f"unsupported SASL mechanism {entry!r}: give a "
                                 "trio_smtpd.sasl mechanism object for it")
            if not isinstance(entry, str) and not all(
                    hasattr(entry, a) for a in ("name", "offered", "start")):
                raise ValueError(f"not a SASL mechanism: {entry!r}")
        if self.max_connections < 1 or self.max_connections_per_ip < 1:
            raise ValueError("connection limits must be at least 1")
        if self.max_connection_rate is not None and self.max_connection_rate < 1:
            raise ValueError("max_connection_rate must be at least 1 (None: no limit)")
        if not 0 < self.connection_rate_period < math.inf:
            raise ValueError("connection_rate_period must be a finite number of seconds")
        if self.client_certificates not in ("none", "optional", "required"):
            raise ValueError("client_certificates is 'none', 'optional' or 'required'")
        if self.client_certificates != "none" and self.tls is None:
            raise ValueError("client certificates need Config.tls")
        self._xclient_networks()  # (ValueError for a bad network)
        self.protocol_config()  # fail now, not at the first connection

    def protocol_config(self) -> ProtocolConfig:
        """The engine's settings: ``protocol`` with this config's fields applied (made
        once per config)."""
        cached = self._cache.get("protocol")
        if isinstance(cached, ProtocolConfig):
            return cached
        cleartext = self.cleartext_auth_mechanisms
        if not self.auth_requires_tls:
            cleartext = (*self.auth_mechanisms, *cleartext)
        protocol = self._cache["protocol"] = replace(
            self.protocol,
            hostname=self.hostname,
            lmtp=self.lmtp,
            tls_available=self.tls is not None,
            auth_mechanisms=self._offered_mechanisms(self.auth_mechanisms, _ANY_TLS),
            cleartext_auth_mechanisms=self._offered_mechanisms(cleartext, None),
            auth_requires_tls=True,
            require_tls=self.require_tls,
            require_auth=self.require_auth,
            max_message_size=self.max_message_size,
            max_recipients=self.max_recipients,
        )
        return protocol

    def _sasl_mechanisms(self) -> dict[str, Mechanism]:
        """Every mechanism this config can run, by name (made once per config)."""
        cached = self._cache.get("sasl")
        if isinstance(cached, dict):
            return cached
        mechanisms: dict[str, Mechanism] = {}
        for entry in (*self.auth_mechanisms, *self.cleartext_auth_mechanisms):
            if isinstance(entry, str):
                if self.authenticator is not None:
                    mechanisms.setdefault(entry, PasswordMechanism(entry, self.authenticator))
            else:
                mechanisms.setdefault(entry.name.upper(), entry)
        self._cache["sasl"] = mechanisms
        return mechanisms

    def _offered_mechanisms(self, entries: Iterable[str | Mechanism],
                           tls: TLSInfo | None) -> tuple[str, ...]:
        """The names of ``entries`` to offer on a connection with this TLS."""
        mechanisms = self._sasl_mechanisms()
        names = [entry if isinstance(entry, str) else entry.name.upper() for entry in entries]
        return tuple(dict.fromkeys(name for name in names if name in mechanisms
                                   and mechanisms[name].offered(tls)))

    def _xclient_networks(self) -> list[Network]:
        """``xclient_trusted`` as networks (made once per config)."""
        cached = self._cache.get("xclient")
        if not isinstance(cached, list):
            cached = self._cache["xclient"] = [ipaddress.ip_network(net, strict=False)
                                               for net in self.xclient_trusted]
        return cached
