"""AUTH in a session: the SASL mechanism's steps, then the application's authenticator.

The engine reports ``AuthStart`` and each ``AuthResponse``; the mechanism (``_sasl.py``)
turns them into a challenge to send, credentials to verify, or a malformed exchange. The
credentials carry the session's ``info`` (who is asking). The authenticator's verdict
becomes an ``Auth`` decision for the application, or a 535 (wrong credentials), the
authenticator's own refusal (a ``Reply``, such as 454 for a client that has failed too
often), 454 (it failed or took too long) or 501 (malformed) that the engine counts towards
``max_auth_failures``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio

from . import _events as core
from ._connection import ServerConnection
from ._decisions import Auth
from ._info import SessionInfo
from ._replies import Reply
from ._sasl import Challenge, Credentials, Failed, Mechanism, Verify, new_mechanism

__all__ = ["AuthFlow", "Authenticator"]

log = logging.getLogger("trio_smtpd")

Authenticator = Callable[[Credentials], Awaitable[str | Reply | None]]

_AUTH_TEMP = Reply(454, "Temporary authentication failure", "4.7.0")
_MALFORMED = Reply(501, "Malformed authentication exchange", "5.5.2")


class AuthFlow:
    """The AUTH exchanges of one session."""

    __slots__ = ("_authenticator", "_hostname", "_info", "_log_id", "_mechanism", "_timeout")

    def __init__(self, authenticator: Authenticator, hostname: str, timeout: float,
                 info: SessionInfo) -> None:
        self._authenticator = authenticator
        self._hostname = hostname
        self._timeout = timeout
        self._info = info
        self._log_id = info.id
        self._mechanism: Mechanism | None = None

    async def step(self, conn: ServerConnection, event: core.AuthStart | core.AuthResponse
                   ) -> Auth | None:
        """Answer one AUTH event on ``conn``, or return the decision it leads to."""
        if isinstance(event, core.AuthStart):
            self._mechanism = new_mechanism(event.mechanism, hostname=self._hostname)
            result = self._mechanism.start(event.initial_response)
        else:
            assert self._mechanism is not None
            result = self._mechanism.step(event.data)
        if isinstance(result, Challenge):
            conn.auth_challenge(result.data)
            return None
        self._mechanism = None
        if isinstance(result, Failed):
            log.info("session %s: malformed AUTH exchange: %s", self._log_id, result.reason)
            conn.auth_failure(_MALFORMED)
            return None
        assert isinstance(result, Verify)
        return await self._verify(conn, result.credentials)

    async def _verify(self, conn: ServerConnection, credentials: Credentials) -> Auth | None:
        credentials = dataclasses.replace(credentials, info=self._info)  # type: ignore[type-var]
        identity: str | Reply | None = None
        with trio.move_on_after(self._timeout) as scope:
            try:
                identity = await self._authenticator(credentials)
            except Exception:
                log.exception("session %s: authenticator failed", self._log_id)
                conn.auth_failure(_AUTH_TEMP)
                return None
        if scope.cancelled_caught:
            log.warning("session %s: authenticator timed out", self._log_id)
            conn.auth_failure(_AUTH_TEMP)
            return None
        if isinstance(identity, Reply) and identity.code < 400:
            log.error("session %s: the authenticator answered %s, not an identity or a "
                      "refusal", self._log_id, identity)
            identity = _AUTH_TEMP
        if identity is None or isinstance(identity, Reply):
            log.info("session %s: AUTH %s failed for %r", self._log_id,
                     credentials.mechanism, credentials.username)
            conn.auth_failure(identity)
            return None
        return Auth(credentials.mechanism, identity, credentials)
