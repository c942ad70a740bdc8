"""AUTH in a session: a SASL mechanism's exchange, its steps timed and its failures told.

The engine reports ``AuthStart`` and each ``AuthResponse``; the mechanism's exchange
(``_mechanisms.py``) turns them into a challenge to send, a success or a failure. A
success becomes an ``Auth`` decision for the application; a failure a 535 (wrong
credentials, refused token), 501 (malformed) or 454 (the validator failed or took too
long), each counted by the engine towards ``max_auth_failures``.
"""

from __future__ import annotations

import logging

import trio

from . import _events as core
from ._connection import ServerConnection
from ._decisions import Auth
from ._info import SessionInfo, TLSInfo
from ._mechanisms import Challenge, Context, Exchange, Failure, Mechanism, Step, Success
from ._metrics import Metrics
from ._replies import Reply
from ._securitylog import format_peer, log_security_event
from ._settings import Authenticator, Config

__all__ = ["AuthFlow", "Authenticator"]

log = logging.getLogger("trio_smtpd")

_AUTH_TEMP = Reply(454, "Temporary authentication failure", "4.7.0")


class AuthFlow:
    """The AUTH exchanges of one session."""

    __slots__ = ("_exchange", "_hostname", "_info", "_log_id", "_mechanism", "_mechanisms",
                 "_metrics", "_timeout")

    def __init__(self, mechanisms: dict[str, Mechanism], hostname: str, timeout: float,
                 info: SessionInfo, metrics: Metrics | None = None) -> None:
        self._mechanisms = mechanisms
        self._metrics = metrics
        self._mechanism = ""  # (of the exchange under way, for the metrics)
        self._hostname = hostname
        self._timeout = timeout
        self._info = info  # (who is asking: credentials carry it to the authenticator)
        self._log_id = info.id
        self._exchange: Exchange | None = None

    @classmethod
    def of(cls, config: Config, info: SessionInfo) -> AuthFlow | None:
        """The AUTH exchanges ``config`` asks for (None: no mechanism to run)."""
        mechanisms = config._sasl_mechanisms()
        if not mechanisms:
            return None
        return cls(mechanisms, config.hostname, config.timeouts.decision, info,
                   config.metrics)

    async def step(self, conn: ServerConnection, event: core.AuthStart | core.AuthResponse,
                   tls: TLSInfo | None) -> Auth | None:
        """Answer one AUTH event on ``conn``, or return the decision it leads to."""
        if isinstance(event, core.AuthStart):
            context = Context(self._hostname, tls, conn.offered_auth_mechanisms, self._info)
            self._exchange = self._mechanisms[event.mechanism].start(context)
            self._mechanism = event.mechanism
            response = event.initial_response
        else:
            response = event.data
        assert self._exchange is not None
        result = await self._run(self._exchange, response)
        if isinstance(result, Challenge):
            conn.auth_challenge(result.data)
            return None
        self._exchange = None
        if isinstance(result, Failure):
            self._log_failure(result)
            if self._metrics is not None:
                self._metrics.auth(self._mechanism, _result_of(result))
            conn.auth_failure(result.reply)
            return None
        return Auth(result.credentials.mechanism, result.identity, result.credentials)

    def _log_failure(self, failure: Failure) -> None:
        peer, code = self._info.peer, (failure.reply.code if failure.reply else 535)
        log_security_event(
            "auth_failed", "session %s: AUTH %s from %s failed (%d): %s", self._log_id,
            self._mechanism, format_peer(peer), code, failure.reason, session=self._log_id,
            peer=peer, mechanism=self._mechanism, user=failure.user, code=code,
            reason=failure.reason)

    async def _run(self, exchange: Exchange, response: bytes | None) -> Step:
        """One step, within the decision time limit; 454 if it fails or is late."""
        with trio.move_on_after(self._timeout):
            try:
                result = await exchange.step(response)
            except Exception:
                log.exception("session %s: SASL mechanism or validator failed", self._log_id)
                return Failure("internal error", _AUTH_TEMP)
            if not isinstance(result, Challenge | Success | Failure):
                log.error("session %s: SASL step returned %r", self._log_id, result)
                return Failure("bad step", _AUTH_TEMP)
            return result
        log.warning("session %s: authenticator timed out", self._log_id)
        return Failure("timed out", _AUTH_TEMP)


def _result_of(failure: Failure) -> str:
    """The ``Metrics.auth`` result of a failed exchange."""
    if failure.reply is _AUTH_TEMP:
        return "timeout" if failure.reason == "timed out" else "error"
    if failure.reply is not None and failure.reply.code == 501:
        return "malformed"
    return "invalid"
