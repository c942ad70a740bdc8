"""OAuth 2.0 bearer tokens in AUTH: OAUTHBEARER (RFC 7628) and XOAUTH2 (the older form
Gmail and Microsoft clients send).

Both carry a user name and a token; the application's ``validate(credentials)`` checks
the token (with its identity provider, or its own table) and returns the identity, or
None. A refusal is told the way each mechanism says: a 334 challenge carrying a JSON
error, which the client acknowledges (``\\x01`` for OAUTHBEARER, an empty line for
XOAUTH2), and then 535.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ._info import TLSInfo
from ._mechanisms import MALFORMED, Challenge, Context, Exchange, Failure, Step, Success, text_of
from ._networks import is_port
from ._sasl import Credentials

__all__ = ["OAuthBearer", "TokenCredentials", "XOAuth2"]

_KEY = re.compile(r"[A-Za-z]+")
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)")


@dataclass(frozen=True, slots=True)
class TokenCredentials(Credentials):
    """An OAuth 2.0 bearer token, from OAUTHBEARER or XOAUTH2."""

    mechanism: str
    #: The user the client names (OAUTHBEARER's authzid, XOAUTH2's ``user=``); may be ""
    #: for OAUTHBEARER, where the token alone says who.
    username: str
    token: str = field(repr=False)
    #: OAUTHBEARER's ``host`` and ``port``: where the client thinks it is connected.
    host: str | None = None
    port: int | None = None

    def check(self, secret: str) -> bool:
        """True if the token is ``secret`` (constant time): for a static token table."""
        import hmac

        return hmac.compare_digest(self.token.encode(), secret.encode())


TokenValidator = Callable[[TokenCredentials], Awaitable[str | None]]


def _pairs(text: str) -> dict[str, str] | None:
    """RFC 7628 3.1: key=value pairs separated by ^A, ending with ^A^A."""
    if not text.endswith("\x01\x01"):
        return None
    pairs: dict[str, str] = {}
    for item in text[:-2].split("\x01"):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not _KEY.fullmatch(key) or key in pairs:
            return None
        pairs[key] = value
    return pairs


class _TokenExchange:
    """The shared shape: an initial response with the token; on refusal an error
    challenge, the client's acknowledgement, then 535."""

    def __init__(self, validate: TokenValidator, error: bytes) -> None:
        self._validate = validate
        self._error = error
        self._refused: Failure | None = None

    def parse(self, text: str) -> TokenCredentials | Failure:
        raise NotImplementedError

    async def step(self, response: bytes | None) -> Step:
        if self._refused is not None:
            return self._refused  # (whatever the acknowledgement was)
        if response is None:
            return Challenge(b"")
        text = text_of(response, "token message")
        if isinstance(text, Failure):
            return text
        credentials = self.parse(text)
        if isinstance(credentials, Failure):
            return credentials
        identity = await self._validate(credentials)
        if identity is None:
            self._refused = Failure(f"token for {credentials.username!r} refused by the "
                                    "validator", user=credentials.username)
            return Challenge(self._error)
        return Success(identity, credentials)


class _BearerExchange(_TokenExchange):
    def parse(self, text: str) -> TokenCredentials | Failure:
        # gs2-header "n,a=user," (no channel binding with OAUTHBEARER: RFC 7628 3.1)
        header, _, rest = text.partition(",")
        authzid, comma, kvpairs = rest.partition(",")
        if header not in ("n", "y") or not comma or (authzid and not authzid.startswith("a=")
                                                     ) or not kvpairs.startswith("\x01"):
            return Failure("bad OAUTHBEARER GS2 header", MALFORMED)
        pairs = _pairs(kvpairs)
        bearer = _BEARER.fullmatch(pairs.get("auth", "")) if pairs is not None else None
        if pairs is None or bearer is None:
            return Failure("OAUTHBEARER needs auth=Bearer <token> in ^A pairs", MALFORMED)
        port = pairs.get("port")
        if port is not None and not is_port(port):
            return Failure("bad OAUTHBEARER port", MALFORMED)
        username = authzid[2:].replace("=2C", ",").replace("=3D", "=")
        return TokenCredentials("OAUTHBEARER", username, bearer.group(1), pairs.get("host"),
                                int(port) if port is not None else None)


class _XOAuth2Exchange(_TokenExchange):
    def parse(self, text: str) -> TokenCredentials | Failure:
        pairs = _pairs(text)
        bearer = _BEARER.fullmatch(pairs.get("auth", "")) if pairs is not None else None
        if pairs is None or bearer is None or not pairs.get("user"):
            return Failure("XOAUTH2 needs user=<name>^Aauth=Bearer <token>^A^A", MALFORMED)
        return TokenCredentials("XOAUTH2", pairs["user"], bearer.group(1))


class OAuthBearer:
    """OAUTHBEARER (RFC 7628). ``validate(credentials)`` returns the identity for the
    token, or None: the client is then told ``{"status": "invalid_token"}`` (with
    ``scope`` and ``openid_configuration`` if given, RFC 7628 3.2.2) and gets 535."""

    name = "OAUTHBEARER"

    def __init__(self, validate: TokenValidator, *, scope: str | None = None,
                 openid_configuration: str | None = None) -> None:
        self._validate = validate
        error: dict[str, str] = {"status": "invalid_token"}
        if scope is not None:
            error["scope"] = scope
        if openid_configuration is not None:
            error["openid-configuration"] = openid_configuration
        self._error = json.dumps(error).encode()

    def offered(self, tls: TLSInfo | None) -> bool:
        """Always, where the configuration says."""
        return True

    def start(self, context: Context) -> Exchange:
        """A new exchange."""
        return _BearerExchange(self._validate, self._error)


class XOAuth2:
    """XOAUTH2, as Gmail and Microsoft 365 clients send it: ``user=<name>^Aauth=Bearer
    <token>^A^A``. ``validate(credentials)`` returns the identity, or None: the client is
    then told ``{"status": "401", "schemes": "bearer"}`` and gets 535."""

    name = "XOAUTH2"

    def __init__(self, validate: TokenValidator, *, scope: str | None = None) -> None:
        self._validate = validate
        error = {"status": "401", "schemes": "bearer"}
        if scope is not None:
            error["scope"] = scope
        self._error = json.dumps(error).encode()

    def offered(self, tls: TLSInfo | None) -> bool:
        """Always, where the configuration says."""
        return True

    def start(self, context: Context) -> Exchange:
        """A new exchange."""
        return _XOAuth2Exchange(self._validate, self._error)
