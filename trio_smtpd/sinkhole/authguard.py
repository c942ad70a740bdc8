"""AUTH for ``--auth-file``: password checks that cost an attacker more than they cost us.

- **Constant time for unknown users:** a name that is not in the file is checked against
  a dummy hash with the file's parameters, so a guess costs the same scrypt (and takes
  the same time) whether the user exists or not.
- **Hashing in its own small pool:** at most ``HASHING_THREADS`` checks run at once, in
  trio threads under their own ``CapacityLimiter``, not the default one that Maildir
  deliveries use: a flood of AUTH attempts waits for its turn (holding no memory but a
  sleeping task) instead of running 40 scrypts of 32 MiB each and starving deliveries.
- **One attempt at a time per client address,** and a delay after each failure that
  doubles with the address's recent failures (``--auth-delay``: 1 s, 2 s, 4 s... up to
  ``MAX_DELAY``), held before the 535 goes out: reconnecting or opening many connections
  does not buy an address more guesses.
- **A failure budget per address** (``--max-auth-failures N/UNIT``, 10 an hour by
  default): past it, AUTH is answered ``454 4.7.0`` at once, without hashing, until the
  budget refills. The budget is a token bucket (``trio_smtpd._ratelimit``): an address
  that stops failing gets one more try every ``UNIT / N``.

Every failure and every refusal is one ``refused`` log line, the one the reply makes
(:mod:`.watch`), with the client's address, the mechanism and the user name; the guard
adds the address's ``failures`` and the ``delay``, or the ``detail`` of a refusal without
a check. A line of its own would say it twice, once without the address (issue 16).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import trio

from .. import Credentials, PlainCredentials, Reply
from .._ratelimit import RateLimit
from .passwords import dummy_hash, verify_password
from .watch import watch_of

__all__ = ["HASHING_THREADS", "MAX_DELAY", "AuthGuard"]

HASHING_THREADS = 2
MAX_DELAY = 30.0
_OVER_BUDGET = Reply(454, "Too many failed authentications from your address; try again "
                          "later", "4.7.0")


class AuthGuard:
    """The sinkhole's authenticator (``Config.authenticator``)."""

    def __init__(self, users: dict[str, str], *, delay: float = 1.0,
                 budget: RateLimit | None = None) -> None:
        self._users = users
        self._dummy = dummy_hash(users)
        self._delay = delay
        self._budget = budget if budget is not None else RateLimit(10, 3600.0)
        self._limiter = trio.CapacityLimiter(HASHING_THREADS)
        self._turns: dict[str, trio.Lock] = {}

    async def __call__(self, credentials: Credentials) -> str | Reply | None:
        if not isinstance(credentials, PlainCredentials):
            return None
        info = credentials.info
        peer = info.peer if info is not None else None
        ip = peer[0] if peer else ""
        # What the refused line of this attempt adds (without a watch, nothing to add to).
        watch = watch_of(info.id) if info is not None else None
        facts = watch.auth_facts if watch is not None else {}
        async with self._turn(ip):
            now = trio.current_time()
            if not self._budget.allows(ip, now):
                facts["detail"] = "failure budget spent"
                return _OVER_BUDGET
            if await self._check(credentials.username, credentials.password):
                return credentials.username
            failures = math.ceil(self._budget.spend(ip, now))
            delay = min(MAX_DELAY, self._delay * 2 ** (failures - 1))
            facts.update(failures=failures, delay=delay)
            await trio.sleep(delay)
            return None

    async def _check(self, username: str, password: str) -> bool:
        encoded = self._users.get(username)
        ok = await trio.to_thread.run_sync(verify_password, password, encoded or self._dummy,
                                           limiter=self._limiter)
        return ok and encoded is not None

    @contextlib.asynccontextmanager
    async def _turn(self, ip: str) -> AsyncIterator[None]:
        """One attempt at a time per address; the lock is forgotten once nobody wants it."""
        lock = self._turns.setdefault(ip, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._turns.pop(ip, None)

