"""SASL mechanisms as plug-ins: the interface every mechanism has, and the simple ones.

A ``Mechanism`` is what a server offers (``name``, and whether it can be ``offered`` on
a connection, given its TLS); for each ``AUTH`` it ``start``s an ``Exchange``, whose
``step(response)`` takes the client's response (None: AUTH came without an initial
response) and says what to do next: send a ``Challenge``, report ``Success`` (the
identity, and the credentials the application's ``Auth`` decision shows), or a
``Failure`` (535 by default, counted towards ``max_auth_failures``). A step may await the
application's validator; it never touches the connection: the session sends, reads,
times the steps and counts failures.

Built in: PLAIN, LOGIN and CRAM-MD5 with ``Config.authenticator`` (``PasswordMechanism``),
EXTERNAL (here), SCRAM-SHA-256 and its -PLUS (``_scram.py``), OAUTHBEARER and XOAUTH2
(``_oauth.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ._info import SessionInfo, TLSInfo
from ._replies import Reply
from ._sasl import Challenge, Credentials, Failed, PasswordSteps, Verify, new_mechanism

__all__ = [
    "MALFORMED",
    "Challenge",
    "Context",
    "Exchange",
    "External",
    "ExternalCredentials",
    "Failure",
    "Mechanism",
    "PasswordMechanism",
    "Step",
    "Success",
    "text_of",
]

#: The answer to an exchange that breaks the mechanism's syntax.
MALFORMED = Reply(501, "Malformed authentication exchange", "5.5.2")


@dataclass(frozen=True, slots=True)
class Context:
    """What a mechanism knows about the connection an exchange runs on."""

    #: Our host name (CRAM-MD5 puts it in its challenge).
    hostname: str
    #: The connection's TLS, None in cleartext.
    tls: TLSInfo | None
    #: The mechanisms offered to this client now: SCRAM-SHA-256 must know whether its
    #: -PLUS variant was (RFC 5802 6, the downgrade check).
    offered: tuple[str, ...] = ()
    #: The session (its client's address is ``info.peer``): password credentials carry
    #: it to the authenticator, for one that throttles or logs per client.
    info: SessionInfo | None = None


class Success(NamedTuple):
    """The client proved who it is: ``identity`` (for ``SessionInfo.authenticated_as``),
    and the ``credentials`` the application's ``Auth`` decision shows."""

    identity: str
    credentials: Credentials


class Failure(NamedTuple):
    """The exchange failed: ``reason`` is logged, ``reply`` sent (None: 535 5.7.8);
    ``user`` is the name the client gave, if it got that far."""

    reason: str
    reply: Reply | None = None
    user: str | None = None


Step = Challenge | Success | Failure


class Exchange(Protocol):
    """One AUTH exchange of a mechanism."""

    async def step(self, response: bytes | None) -> Step:
        """Take the client's next response (the first may be None: no initial
        response) and say what comes next."""
        ...


class Mechanism(Protocol):
    """A SASL mechanism a server can offer: give instances in ``Config.auth_mechanisms``
    (or ``cleartext_auth_mechanisms``)."""

    #: The name advertised in EHLO and given in AUTH, in upper case.
    name: str

    def offered(self, tls: TLSInfo | None) -> bool:
        """Whether to offer it on a connection with this TLS (None: cleartext)."""
        ...

    def start(self, context: Context) -> Exchange:
        """A new exchange, for one AUTH command."""
        ...


def text_of(data: bytes, what: str) -> str | Failure:
    """``data`` as UTF-8 text, or the failure it is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Failure(f"{what} is not UTF-8", MALFORMED)


Authenticator = Callable[[Credentials], Awaitable[str | Reply | None]]


class PasswordMechanism:
    """PLAIN (RFC 4616), LOGIN or CRAM-MD5 (RFC 2195), whose credentials the
    application's authenticator checks: what ``"PLAIN"`` and the like in
    ``Config.auth_mechanisms`` stand for."""

    def __init__(self, name: str, authenticator: Authenticator) -> None:
        new_mechanism(name, hostname="-")  # (refuses names it does not know)
        self.name = name
        self._authenticator = authenticator

    def offered(self, tls: TLSInfo | None) -> bool:
        """Always, where the configuration says."""
        return True

    def start(self, context: Context) -> Exchange:
        """A new exchange."""
        return _PasswordExchange(new_mechanism(self.name, hostname=context.hostname),
                                 self._authenticator, context.info)


class _PasswordExchange:
    def __init__(self, steps: PasswordSteps, authenticator: Authenticator,
                 info: SessionInfo | None) -> None:
        self._steps = steps
        self._authenticator = authenticator
        self._info = info
        self._started = False

    async def step(self, response: bytes | None) -> Step:
        if self._started:
            result = self._steps.step(response or b"")
        else:
            self._started = True
            result = self._steps.start(response)
        if isinstance(result, Challenge):
            return result
        if isinstance(result, Failed):
            return Failure(result.reason, MALFORMED)
        assert isinstance(result, Verify)
        # (PlainCredentials or CramMD5Credentials: dataclasses, both)
        credentials = dataclasses.replace(result.credentials,  # type: ignore[type-var]
                                          info=self._info)
        identity = await self._authenticator(credentials)
        if isinstance(identity, Reply) and identity.code < 400:
            raise ValueError(f"the authenticator answered {identity}, not an identity or a "
                             "refusal")  # (AuthFlow logs it and answers 454)
        if identity is None or isinstance(identity, Reply):
            return Failure(f"{credentials.username!r} refused by the authenticator",
                           identity, credentials.username)
        return Success(identity, credentials)


@dataclass(frozen=True, slots=True)
class ExternalCredentials(Credentials):
    """EXTERNAL (RFC 4422 appendix A): the client is who its verified TLS certificate
    says; ``authzid`` is whom it asks to act as ("" for itself)."""

    mechanism: str
    #: ``authzid`` if given, else the certificate's subject.
    username: str
    authzid: str
    #: The certificate's subject (RFC 4514).
    subject: str
    #: The certificate, as ``getpeercert()`` gives it.
    certificate: dict[str, Any] = field(repr=False)


class External:
    """EXTERNAL: identity from the client's verified TLS certificate.

    ``validate(credentials)`` returns the identity to log in as (say, the user whose
    certificate subject it is, if ``authzid`` is empty or names that user) or None to
    refuse (535). Offered only on connections whose client certificate was verified
    (``Config.client_certificates``).
    """

    name = "EXTERNAL"

    def __init__(self, validate: Callable[[ExternalCredentials], Awaitable[str | None]]
                 ) -> None:
        self._validate = validate

    def offered(self, tls: TLSInfo | None) -> bool:
        """Only under TLS with a verified client certificate."""
        return tls is not None and tls.client_verified and tls.client_subject is not None

    def start(self, context: Context) -> Exchange:
        """A new exchange."""
        return _ExternalExchange(self._validate, context.tls)


class _ExternalExchange:
    def __init__(self, validate: Callable[[ExternalCredentials], Awaitable[str | None]],
                 tls: TLSInfo | None) -> None:
        self._validate = validate
        self._tls = tls

    async def step(self, response: bytes | None) -> Step:
        if response is None:
            return Challenge(b"")  # RFC 4954 4: the authzid comes as the response
        tls = self._tls
        if tls is None or not tls.client_verified or tls.client_subject is None:
            return Failure("EXTERNAL without a verified client certificate")
        authzid = text_of(response, "EXTERNAL authzid")
        if isinstance(authzid, Failure):
            return authzid
        credentials = ExternalCredentials("EXTERNAL", authzid or tls.client_subject, authzid,
                                          tls.client_subject, tls.peer_certificate or {})
        identity = await self._validate(credentials)
        if identity is None:
            return Failure(f"certificate {tls.client_subject!r} refused by the validator")
        return Success(identity, credentials)
