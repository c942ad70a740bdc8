"""The watchdog that enforces every session's deadline, on trio's mock clock."""

from __future__ import annotations

import math

import trio
import trio.testing

from trio_smtpd._watchdog import Watchdog


class Member:
    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        self.expired_at: list[float] = []

    def set(self, watchdog: Watchdog, deadline: float) -> None:
        self.deadline = deadline
        watchdog.expect(deadline)

    def expire(self, now: float) -> None:
        self.expired_at.append(now)
        self.deadline = math.inf


async def test_members_expire_at_their_deadline_not_before(
        autojump_clock: trio.testing.MockClock) -> None:
    early, late, never = Member(), Member(), Member()
    watchdog = Watchdog([early, late, never], resolution=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        start = trio.current_time()
        early.set(watchdog, start + 10)
        late.set(watchdog, start + 300)
        await trio.sleep(299)
        assert early.expired_at and not late.expired_at
        assert 10 <= early.expired_at[0] - start < 10.1
        await trio.sleep(2)
        assert 300 <= late.expired_at[0] - start < 300.1
        assert never.expired_at == []
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_set_during_a_long_sleep_is_kept(
        autojump_clock: trio.testing.MockClock) -> None:
    patient, hasty = Member(), Member()
    watchdog = Watchdog([patient, hasty], resolution=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        start = trio.current_time()
        patient.set(watchdog, start + 1000)
        await trio.sleep(1)  # the watchdog now sleeps until start + 1000
        hasty.set(watchdog, start + 5)
        await trio.sleep(10)
        assert 5 <= hasty.expired_at[0] - start < 5.1
        assert patient.expired_at == []
        nursery.cancel_scope.cancel()


async def test_a_pushed_back_deadline_does_not_expire(
        autojump_clock: trio.testing.MockClock) -> None:
    # A busy session moves its deadline forward at every command.
    busy = Member()
    watchdog = Watchdog([busy], resolution=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        for _ in range(20):
            busy.set(watchdog, trio.current_time() + 30)
            await trio.sleep(20)
        assert busy.expired_at == []
        await trio.sleep(31)
        assert len(busy.expired_at) == 1
        nursery.cancel_scope.cancel()


async def test_checks_are_at_least_a_resolution_apart() -> None:
    # Deadlines that keep coming due one after another are handled in batches.
    members = [Member() for _ in range(100)]
    watchdog = Watchdog(members, resolution=0.5)
    watchdog.check(0.0)
    for n, member in enumerate(members):
        member.set(watchdog, 0.01 * (n + 1))
    assert watchdog.next_check == 0.01  # the first deadline...
    watchdog.check(0.01)
    assert watchdog.next_check == 0.51  # ...then no sooner than the resolution allows
    watchdog.check(0.51)
    assert sum(1 for m in members if m.expired_at) == 51
