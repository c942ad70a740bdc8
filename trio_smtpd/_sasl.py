"""The password mechanisms for AUTH (RFC 4954), sans-I/O: PLAIN, LOGIN and CRAM-MD5.

Their steps turn client responses into either a challenge to send (``Challenge``), the
credentials to check (``Verify``) or a malformed exchange (``Failed``). The server layer
sends challenges and asks the application's authenticator about the credentials; the
credentials carry ``check(secret)`` so applications never compare secrets themselves.
The other mechanisms (SCRAM, EXTERNAL, OAuth) and the interface every mechanism has are
in ``_mechanisms.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ._info import SessionInfo

__all__ = [
    "MECHANISMS",
    "Challenge",
    "CramMD5Credentials",
    "Credentials",
    "Failed",
    "PasswordSteps",
    "PlainCredentials",
    "Verify",
    "new_mechanism",
]

MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
_MAX_PART = 255


class Credentials:
    """What a client presented in AUTH, for the application's authenticator to check.

    ``check(secret)`` compares against the user's secret in constant time, so that
    applications never compare secrets themselves.
    """

    __slots__ = ()
    #: The SASL mechanism used, e.g. ``"PLAIN"``.
    mechanism: str
    #: Who the client says it is (the authentication identity).
    username: str

    @property
    def info(self) -> SessionInfo | None:
        """The session the credentials came in (the client's address is ``info.peer``),
        for an authenticator that throttles or logs per client; None where the mechanism
        does not pass it on (password mechanisms do)."""
        return None

    def check(self, secret: str) -> bool:
        """True if the client proved knowledge of ``secret``."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class PlainCredentials(Credentials):
    """A username and password, from PLAIN (RFC 4616) or LOGIN."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""
    info: SessionInfo | None = field(default=None, repr=False, compare=False)

    def check(self, secret: str) -> bool:
        return hmac.compare_digest(self.password.encode("utf-8"), secret.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class CramMD5Credentials(Credentials):
    """A CRAM-MD5 answer (RFC 2195): check it against the user's plaintext secret."""

    mechanism: str
    username: str
    challenge: bytes
    digest: str
    info: SessionInfo | None = field(default=None, repr=False, compare=False)

    def check(self, secret: str) -> bool:
        expected = hmac.new(secret.encode("utf-8"), self.challenge, hashlib.md5).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self.digest.lower().encode("ascii"))


class Challenge(NamedTuple):
    """A challenge to send the client (334), whose answer is the next response."""

    data: bytes


class Verify(NamedTuple):
    credentials: Credentials


class Failed(NamedTuple):
    reason: str


Step = Challenge | Verify | Failed


class PasswordSteps(Protocol):
    """The steps of one PLAIN, LOGIN or CRAM-MD5 exchange."""

    name: str

    def start(self, initial_response: bytes | None) -> Step: ...

    def step(self, response: bytes) -> Step: ...


def _text(data: bytes, what: str) -> str | Failed:
    if len(data) > _MAX_PART:
        return Failed(f"{what} longer than {_MAX_PART} octets")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Failed(f"{what} is not UTF-8")


class Plain:
    name = "PLAIN"

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"")
        return self.step(initial_response)

    def step(self, response: bytes) -> Step:
        parts = response.split(b"\x00")
        if len(parts) != 3:
            return Failed("PLAIN needs authzid NUL authcid NUL passwd")
        texts = [_text(part, what) for part, what in zip(
            parts, ("authzid", "authcid", "password"), strict=True)]
        for text in texts:
            if isinstance(text, Failed):
                return text
        authzid, username, password = (str(t) for t in texts)
        if not username or not password:
            return Failed("PLAIN needs a non-empty authcid and password")
        return Verify(PlainCredentials("PLAIN", username, password, authzid))


class Login:
    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"Username:")
        return self.step(initial_response)

    def step(self, response: bytes) -> Step:
        text = _text(response, "username" if self._username is None else "password")
        if isinstance(text, Failed):
            return text
        if not text:
            return Failed("LOGIN needs a non-empty username and password")
        if self._username is None:
            self._username = text
            return Challenge(b"Password:")
        return Verify(PlainCredentials("LOGIN", self._username, text))


class CramMD5:
    name = "CRAM-MD5"

    def __init__(self, *, hostname: str, challenge: bytes | None = None) -> None:
        self.challenge = challenge or (
            f"<{secrets.randbits(64)}.{int(time.time())}.{os.getpid()}@{hostname}>".encode())

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is not None:
            return Failed("CRAM-MD5 takes no initial response")
        return Challenge(self.challenge)

    def step(self, response: bytes) -> Step:
        text = _text(response, "response")
        if isinstance(text, Failed):
            return text
        username, _, digest = text.rpartition(" ")
        if not username or len(digest) != 32 or any(
                c not in "0123456789abcdefABCDEF" for c in digest):
            return Failed("CRAM-MD5 needs 'username hexdigest'")
        return Verify(CramMD5Credentials("CRAM-MD5", username, self.challenge, digest))


def new_mechanism(name: str, *, hostname: str) -> PasswordSteps:
    if name == "PLAIN":
        return Plain()
    if name == "LOGIN":
        return Login()
    if name == "CRAM-MD5":
        return CramMD5(hostname=hostname)
    raise ValueError(f"unsupported SASL mechanism {name!r}")
