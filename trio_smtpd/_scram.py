"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677), server side.

The server never sees the password: the application keeps, per user, a salt, an
iteration count, StoredKey and ServerKey (``ScramKeys``, made once from the password by
``ScramKeys.from_password``), and gives the mechanism a ``lookup(username)`` returning
them. A client proves it knows the password by a proof over the whole exchange; the
server proves it knows the keys by its signature in the last message.

``ScramServer`` is the exchange itself, synchronous and free of I/O (the RFC's test
vector runs through it); ``ScramSHA256`` and ``ScramSHA256Plus`` are the mechanisms.

Channel binding (-PLUS): the client binds the exchange to the TLS connection, so that a
man in the middle with another certificate cannot relay it. What Python's ssl module
gives (see ``_certificates.py``): ``tls-server-end-point`` when the server's certificate
was loaded with ``load_certificate``, ``tls-unique`` on TLS 1.2; ``tls-exporter`` is not
available. -PLUS is offered only on connections where one of them is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ._info import TLSInfo
from ._mechanisms import MALFORMED, Challenge, Context, Exchange, Failure, Step, Success
from ._sasl import Credentials

__all__ = ["ScramCredentials", "ScramKeys", "ScramLookup", "ScramSHA256", "ScramSHA256Plus",
           "ScramServer", "saslprep"]

_HASH = "sha256"
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable, no comma
# A per-process key that makes the salt of an unknown user look stable and real.
_FAKE_SALT_KEY = secrets.token_bytes(32)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, _HASH).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """What a server stores for a SCRAM-SHA-256 user, instead of the password."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def from_password(cls, password: str, *, salt: bytes | None = None,
                      iterations: int = 4096) -> ScramKeys:
        """The keys for ``password`` (SASLprep'd, as RFC 5802 2.2 says), with a new
        random 16-octet salt unless one is given. RFC 7677 asks for at least 4096
        iterations."""
        salt = secrets.token_bytes(16) if salt is None else salt
        salted = hashlib.pbkdf2_hmac(_HASH, saslprep(password).encode("utf-8"), salt,
                                     iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, hashlib.sha256(client_key).digest(),
                   _hmac(salted, b"Server Key"))

    def __str__(self) -> str:
        """PostgreSQL's notation: ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
        (base64), one line to keep in a password file."""
        return (f"SCRAM-SHA-256${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")

    @classmethod
    def parse(cls, text: str) -> ScramKeys:
        """The keys ``str(keys)`` wrote; ValueError if ``text`` is not that."""
        try:
            scheme, params, keys = text.strip().split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            if scheme != "SCRAM-SHA-256":
                raise ValueError(scheme)
            return cls(base64.b64decode(salt, validate=True), int(iterations),
                       base64.b64decode(stored, validate=True),
                       base64.b64decode(server, validate=True))
        except (ValueError, binascii.Error):
            raise ValueError("not SCRAM-SHA-256$<iterations>:<salt>$<stored>:<server>"
                             ) from None


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep of a password or name (ValueError if it has prohibited
    characters)."""
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text
                     if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize("NFKC", mapped)
    for c in prepared:
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
                or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
                or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
                or stringprep.in_table_c9(c) or stringprep.in_table_a1(c)):
            raise ValueError("prohibited character in SASLprep input")
    right_to_left = any(stringprep.in_table_d1(c) for c in prepared)
    if right_to_left and (any(stringprep.in_table_d2(c) for c in prepared) or not (
            stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))):
        raise ValueError("bad bidirectional text in SASLprep input")
    return prepared


@dataclass(frozen=True, slots=True)
class ScramCredentials(Credentials):
    """A SCRAM exchange whose proof was right: the client knows the password."""

    mechanism: str
    username: str
    authzid: str
    #: The channel binding the exchange was bound to (``"tls-server-end-point"``...),
    #: None without one.
    channel_binding: str | None


def _saslname(text: str) -> str | None:
    """RFC 5802 saslname: "=2C" is a comma, "=3D" an equals sign; any other "=" is bad."""
    if "=" in text.replace("=2C", "").replace("=3D", ""):
        return None
    return text.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One SCRAM-SHA-256(-PLUS) exchange, without I/O: ``client_first``, then
    ``server_first`` with the user's keys, then ``client_final``."""

    def __init__(self, *, plus: bool, bindings: dict[str, bytes], plus_offered: bool,
                 nonce: str | None = None) -> None:
        self.plus = plus
        self._bindings = bindings
        self._plus_offered = plus_offered
        self._server_nonce = nonce or secrets.token_urlsafe(18)
        self.username = ""
        self.authzid = ""
        self.binding: str | None = None
        self._gs2_header = b""
        self._nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._keys: ScramKeys | None = None

    def client_first(self, message: bytes) -> Failure | None:
        """Read client-first-message; the failure, if it is one."""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("SCRAM client-first-message is not UTF-8", MALFORMED)
        parts = text.split(",", 2)
        if len(parts) != 3:
            return Failure("SCRAM client-first-message without a GS2 header", MALFORMED)
        flag, authzid, bare = parts
        refused = self._check_binding(flag)
        if refused is not None:
            return refused
        if authzid and not authzid.startswith("a="):
            return Failure("bad SCRAM authzid", MALFORMED)
        self.authzid = _saslname(authzid[2:]) or ""
        fields = bare.split(",")
        if len(fields) < 2 or not fields[0].startswith("n=") or not fields[1].startswith("r="):
            return Failure("SCRAM client-first-message needs n= and r=", MALFORMED)
        username = _saslname(fields[0][2:])
        nonce = fields[1][2:]
        if not username or not _NONCE.fullmatch(nonce):
            return Failure("bad SCRAM username or nonce", MALFORMED)
        self.username, self._nonce = username, nonce + self._server_nonce
        self._gs2_header = f"{flag},{authzid},".encode()
        self._client_first_bare = bare
        return None

    def _check_binding(self, flag: str) -> Failure | None:
        if flag == "n":
            return Failure("SCRAM-SHA-256-PLUS without channel binding") if self.plus else None
        if flag == "y":
            # RFC 5802 6: the client could bind but thinks we cannot; we offered -PLUS,
            # so someone removed it on the way (a downgrade).
            return Failure("SCRAM channel binding downgraded") if self._plus_offered else None
        if not flag.startswith("p=") or not self.plus:
            return Failure("SCRAM channel binding flag not for this mechanism", MALFORMED)
        if flag[2:] not in self._bindings:
            return Failure(f"SCRAM channel binding {flag[2:]!r} not available")
        self.binding = flag[2:]
        return None

    def server_first(self, keys: ScramKeys) -> bytes:
        """server-first-message, for the user's ``keys``."""
        self._keys = keys
        self._server_first = f"r={self._nonce},s={_b64(keys.salt)},i={keys.iterations}"
        return self._server_first.encode()

    def client_final(self, message: bytes) -> bytes | Failure:
        """Check client-final-message: server-final-message if the proof is right."""
        keys = self._keys
        assert keys is not None
        text = message.decode("utf-8", "replace")
        without_proof, _, proof = text.rpartition(",p=")
        fields = without_proof.split(",")
        if len(fields) < 2 or not fields[0].startswith("c=") or not fields[1].startswith("r="):
            return Failure("SCRAM client-final-message needs c=, r= and p=", MALFORMED)
        binding = self._gs2_header + (self._bindings[self.binding] if self.binding else b"")
        try:
            client_proof = base64.b64decode(proof, validate=True)
            sent_binding = base64.b64decode(fields[0][2:], validate=True)
        except (binascii.Error, ValueError):
            return Failure("bad base64 in SCRAM client-final-message", MALFORMED)
        if not hmac.compare_digest(sent_binding, binding):
            return Failure("SCRAM channel bindings do not match")
        if fields[1][2:] != self._nonce:
            return Failure("SCRAM nonce does not match")
        auth_message = ",".join((self._client_first_bare, self._server_first,
                                 without_proof)).encode()
        signature = _hmac(keys.stored_key, auth_message)
        if len(client_proof) != len(signature):
            return Failure("SCRAM proof of the wrong size")
        client_key = bytes(a ^ b for a, b in zip(client_proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key):
            return Failure(f"wrong SCRAM proof for {self.username!r}", user=self.username)
        return b"v=" + base64.b64encode(_hmac(keys.server_key, auth_message))


ScramLookup = Callable[[str], Awaitable[ScramKeys | None]]


def _unknown_user(username: str, iterations: int) -> ScramKeys:
    """Keys for a user that does not exist, so that the exchange goes on as for one
    that does and fails at the proof: nobody learns which users exist."""
    salt = _hmac(_FAKE_SALT_KEY, username.encode("utf-8"))[:16]
    return ScramKeys(salt, iterations, os.urandom(32), os.urandom(32))


class ScramSHA256:
    """SCRAM-SHA-256 (RFC 7677): ``lookup(username)`` returns the user's ``ScramKeys``,
    or None if there is no such user (the exchange then fails with 535, as for a wrong
    password). An authzid other than the username is refused.

    ``iterations``: the count the users' keys were made with, which an unknown user is
    shown too (the server's first message names it before any proof). Keep every user's
    keys at that one count: a user whose keys differ can be told from an unknown one."""

    name = "SCRAM-SHA-256"
    _plus = False

    def __init__(self, lookup: ScramLookup, *, iterations: int = 4096) -> None:
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        self._lookup = lookup
        self._iterations = iterations

    def offered(self, tls: TLSInfo | None) -> bool:
        """Always, where the configuration says."""
        return True

    def start(self, context: Context) -> Exchange:
        """A new exchange."""
        bindings = context.tls.channel_bindings if context.tls is not None else {}
        server = ScramServer(plus=self._plus, bindings=bindings,
                             plus_offered="SCRAM-SHA-256-PLUS" in context.offered)
        return _ScramExchange(server, self._lookup, self.name, self._iterations)


class ScramSHA256Plus(ScramSHA256):
    """SCRAM-SHA-256-PLUS: SCRAM-SHA-256 bound to the TLS channel. Offered only where a
    channel binding is available (``TLSInfo.channel_bindings``)."""

    name = "SCRAM-SHA-256-PLUS"
    _plus = True

    def offered(self, tls: TLSInfo | None) -> bool:
        """Only under TLS with a channel binding to offer."""
        return tls is not None and bool(tls.channel_bindings)


class _ScramExchange:
    def __init__(self, server: ScramServer, lookup: ScramLookup, name: str,
                 iterations: int) -> None:
        self._server = server
        self._lookup = lookup
        self._name = name
        self._iterations = iterations
        self._stage = 0
        self._known = True

    async def step(self, response: bytes | None) -> Step:
        server, stage = self._server, self._stage
        self._stage += 1
        if response is None:
            self._stage = 0
            return Challenge(b"")
        if stage == 0:
            failure = server.client_first(response)
            if failure is not None:
                return failure
            keys = await self._lookup(server.username)
            self._known = keys is not None
            return Challenge(server.server_first(
                keys or _unknown_user(server.username, self._iterations)))
        if stage == 1:
            final = server.client_final(response)
            if isinstance(final, Failure):
                return final if self._known else Failure(f"no SCRAM user {server.username!r}",
                                                         user=server.username)
            if server.authzid and server.authzid != server.username:
                return Failure(f"SCRAM authzid {server.authzid!r} is not the user",
                               user=server.username)
            return Challenge(final)  # RFC 4954 4: the client answers it with an empty line
        if response:
            return Failure("SCRAM expected an empty response to the server's signature",
                           MALFORMED)
        return Success(server.username, ScramCredentials(
            self._name, server.username, server.authzid, server.binding))
