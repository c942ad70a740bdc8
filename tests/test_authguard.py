"""The sinkhole's authenticator in-process: the same work for every user name, its own
small pool of hashing threads, delays and a failure budget per address (trio's clock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from trio_smtpd import PlainCredentials, Reply, SessionInfo
from trio_smtpd._ratelimit import RateLimit
from trio_smtpd.sinkhole import authguard
from trio_smtpd.sinkhole.authguard import HASHING_THREADS, MAX_DELAY, AuthGuard
from trio_smtpd.sinkhole.passwords import dummy_hash, hash_password, verify_password

USERS = {"alice": hash_password("s3cret", log2_n=4)}


def credentials(user: str, password: str, ip: str = "192.0.2.1") -> PlainCredentials:
    info = SessionInfo("1.1", (ip, 2525), None, False, datetime.now(UTC))
    return PlainCredentials("PLAIN", user, password, info=info)


def test_dummy_hash_has_the_files_parameters() -> None:
    users = {"a": hash_password("x", log2_n=5), "b": hash_password("y", log2_n=5),
             "c": hash_password("z", log2_n=4)}
    assert dummy_hash(users).split("$")[1:4] == ["5", "8", "1"]
    assert dummy_hash({}).split("$")[1:4] == ["15", "8", "1"]


async def test_every_name_costs_one_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []

    def counting(password: str, encoded: str) -> bool:
        checked.append(encoded)
        return verify_password(password, encoded)

    monkeypatch.setattr(authguard, "verify_password", counting)
    guard = AuthGuard(USERS, delay=0)
    assert await guard(credentials("alice", "s3cret")) == "alice"
    assert await guard(credentials("alice", "wrong")) is None
    assert await guard(credentials("mallory", "s3cret")) is None
    assert await guard(credentials("mallory", "")) is None
    assert len(checked) == 4  # one scrypt each, known name or not
    assert checked[2] == checked[3] != USERS["alice"]  # the unknown ones: the dummy


async def test_hashing_runs_at_most_two_at_once_in_its_own_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow(password: str, encoded: str) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(authguard, "verify_password", slow)
    guard = AuthGuard(USERS, delay=0)
    default = trio.to_thread.current_default_thread_limiter()
    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(guard, credentials("alice", "x", f"192.0.2.{n}"))
        await trio.sleep(0.01)
        assert default.borrowed_tokens == 0  # deliveries' threads are not taken
    assert most == HASHING_THREADS


@pytest.fixture
def inline_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash in trio's thread: on the autojump clock, time would jump while a hashing
    thread works (every task is then waiting), moving the delays being measured."""
    async def run_here(function: Callable[..., bool], *args: object,
                       limiter: trio.CapacityLimiter | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        return function(*args)

    monkeypatch.setattr(authguard.trio.to_thread, "run_sync", run_here)


@pytest.mark.usefixtures("inline_hashing")
async def test_delays_double_and_the_budget_runs_out(
        autojump_clock: trio.testing.MockClock) -> None:
    guard = AuthGuard(USERS, delay=1.0, budget=RateLimit(7, 3600.0))
    waits = []
    for _ in range(7):
        start = trio.current_time()
        assert await guard(credentials("alice", "wrong")) is None
        waits.append(round(trio.current_time() - start, 3))
    assert waits == [1, 2, 4, 8, 16, MAX_DELAY, MAX_DELAY]
    refused = await guard(credentials("alice", "s3cret"))
    assert isinstance(refused, Reply) and refused.code == 454
    assert await guard(credentials("alice", "s3cret", "192.0.2.99")) == "alice"
    await trio.sleep(3600 / 7)  # one failure paid back
    assert await guard(credentials("alice", "s3cret")) == "alice"


@pytest.mark.usefixtures("inline_hashing")
async def test_one_attempt_at_a_time_per_address(
        autojump_clock: trio.testing.MockClock) -> None:
    guard = AuthGuard(USERS, delay=10.0)
    ends: list[float] = []

    async def attempt(ip: str) -> None:
        await guard(credentials("alice", "wrong", ip))
        ends.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(attempt, "192.0.2.1")
        nursery.start_soon(attempt, "192.0.2.2")
    # The same address waits its turn (10, then 20, then 30 s, the most); another does not.
    assert sorted(round(end - start) for end in ends) == [10, 10, 30, 60]
    assert not guard._turns  # nothing left behind
