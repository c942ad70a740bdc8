"""AUTH in a session: the SASL mechanism's steps, then the application's authenticator.

The engine reports ``AuthStart`` and each ``AuthResponse``; the mechanism (``_sasl.py``)
turns them into a challenge to send, credentials to verify, or a malformed exchange. The
authenticator's verdict becomes an ``Auth`` decision for the application, or a 535 (wrong
credentials), 454 (it failed or took too long) or 501 (malformed) that the engine counts
towards ``max_auth_failures``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from . import _events as core
from ._connection import ServerConnection
from ._decisions import Auth
from ._metrics import Metrics
from ._replies import Reply
from ._sasl import Challenge, Credentials, Failed, Mechanism, Verify, new_mechanism
from ._settings import Config

__all__ = ["AuthFlow", "Authenticator"]

log = logging.getLogger("trio_smtpd")

Authenticator = Callable[[Credentials], Awaitable[str | None]]

_AUTH_TEMP = Reply(454, "Temporary authentication failure", "4.7.0")
_MALFORMED = Reply(501, "Malformed authentication exchange", "5.5.2")


class AuthFlow:
    """The AUTH exchanges of one session."""

    __slots__ = ("_authenticator", "_hostname", "_log_id", "_mechanism", "_metrics",
                 "_timeout")

    def __init__(self, authenticator: Authenticator, hostname: str, timeout: float,
                 log_id: str, metrics: Metrics | None = None) -> None:
        self._authenticator = authenticator
        self._hostname = hostname
        self._timeout = timeout
        self._log_id = log_id
        self._mechanism: Mechanism | None = None
        self._metrics = metrics

    @classmethod
    def of(cls, config: Config, log_id: str) -> AuthFlow | None:
        """The AUTH exchanges ``config`` asks for (None: no authenticator)."""
        if config.authenticator is None:
            return None
        return cls(config.authenticator, config.hostname, config.timeouts.decision, log_id,
                   config.metrics)

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
        mechanism, self._mechanism = self._mechanism, None
        if isinstance(result, Failed):
            log.info("session %s: malformed AUTH exchange: %s", self._log_id, result.reason)
            if self._metrics is not None and mechanism is not None:
                self._metrics.auth(mechanism.name, "malformed")
            conn.auth_failure(_MALFORMED)
            return None
        assert isinstance(result, Verify)
        return await self._verify(conn, result.credentials)

    async def _verify(self, conn: ServerConnection, credentials: Credentials) -> Auth | None:
        identity: str | None = None
        with trio.move_on_after(self._timeout) as scope:
            try:
                identity = await self._authenticator(credentials)
            except Exception:
                log.exception("session %s: authenticator failed", self._log_id)
                self._count(credentials, "error")
                conn.auth_failure(_AUTH_TEMP)
                return None
        if scope.cancelled_caught:
            log.warning("session %s: authenticator timed out", self._log_id)
            self._count(credentials, "timeout")
            conn.auth_failure(_AUTH_TEMP)
            return None
        if identity is None:
            log.info("session %s: AUTH %s failed for %r", self._log_id,
                     credentials.mechanism, credentials.username)
            self._count(credentials, "invalid")
            conn.auth_failure()
            return None
        return Auth(credentials.mechanism, identity, credentials)

    def _count(self, credentials: Credentials, result: str) -> None:
        if self._metrics is not None:
            self._metrics.auth(credentials.mechanism, result)
