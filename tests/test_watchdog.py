"""The watchdog that ends plain-socket waits on time, on trio's mock clock."""

from __future__ import annotations

import math
import weakref

import trio
import trio.testing

from trio_smtpd._watchdog import Watchdog


class Member:
    def __init__(self) -> None:
        self.watched_deadline = math.inf
        self.queued_at = math.inf
        self.expired_at: list[float] = []

    def expire(self, now: float) -> None:
        self.expired_at.append(now)

    def __lt__(self, other: Member) -> bool:
        return id(self) < id(other)


async def test_members_expire_at_their_deadline_not_before(
        autojump_clock: trio.testing.MockClock) -> None:
    early, late, never = Member(), Member(), Member()
    watchdog = Watchdog(resolution=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        start = trio.current_time()
        watchdog.watch(early, start + 10)
        watchdog.watch(late, start + 300)
        await trio.sleep(299)
        assert early.expired_at and not late.expired_at
        assert 10 <= early.expired_at[0] - start < 10.1
        await trio.sleep(2)
        assert 300 <= late.expired_at[0] - start < 300.1
        assert never.expired_at == []
        assert [early.watched_deadline, late.watched_deadline] == [math.inf, math.inf]
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_set_during_a_long_sleep_is_kept(
        autojump_clock: trio.testing.MockClock) -> None:
    patient, hasty = Member(), Member()
    watchdog = Watchdog(resolution=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        start = trio.current_time()
        watchdog.watch(patient, start + 1000)
        await trio.sleep(1)  # the watchdog now sleeps until start + 1000
        watchdog.watch(hasty, start + 5)
        await trio.sleep(10)
        assert 5 <= hasty.expired_at[0] - start < 5.1
        assert patient.expired_at == []
        nursery.cancel_scope.cancel()


async def test_a_replaced_or_withdrawn_deadline_does_not_expire(
        autojump_clock: trio.testing.MockClock) -> None:
    # A busy connection sets a new deadline at every wait, and withdraws it after.
    busy, done = Member(), Member()
    watchdog = Watchdog(resolution=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        for _ in range(20):
            watchdog.watch(busy, trio.current_time() + 30)
            await trio.sleep(20)
        # (busy's last deadline is 10 s from now)
        watchdog.watch(done, trio.current_time() + 2)
        watchdog.unwatch(done)
        await trio.sleep(5)
        assert busy.expired_at == [] and done.expired_at == []
        await trio.sleep(10)
        assert len(busy.expired_at) == 1
        nursery.cancel_scope.cancel()


def test_deadlines_that_come_due_together_expire_in_one_pass() -> None:
    members = [Member() for _ in range(100)]
    watchdog = Watchdog(resolution=0.5)
    for n, member in enumerate(members):
        watchdog.watch(member, 0.01 * (n + 1))
    watchdog.check(0.51)
    assert sum(1 for m in members if m.expired_at) == 51
    watchdog.check(1.0)
    assert all(m.expired_at == [m.expired_at[0]] for m in members)  # once each


def test_stale_entries_do_not_pile_up() -> None:
    # Every wait of a busy connection replaces its deadline: the heap stays small.
    member = Member()
    watchdog = Watchdog()
    for n in range(10_000):
        watchdog.watch(member, 1000.0 + n)
        watchdog.check(0.0)
    assert len(watchdog._heap) < 200
    watchdog.check(20_000.0)
    assert member.expired_at == [20_000.0]


def test_a_deadline_moved_later_costs_no_heap_entry_and_still_holds() -> None:
    member = Member()
    watchdog = Watchdog()
    for deadline in (10.0, 20.0, 30.0):  # a busy session: each command moves it on
        watchdog.watch(member, deadline)
        watchdog.unwatch(member)
    watchdog.watch(member, 40.0)
    assert len(watchdog._heap) == 1
    watchdog.check(15.0)  # its entry for 10 comes up: looked at, queued again for 40
    assert member.expired_at == [] and watchdog._heap == [(40.0, member)]
    watchdog.check(39.9)
    assert member.expired_at == []
    watchdog.check(40.0)
    assert member.expired_at == [40.0]


def test_an_earlier_deadline_than_the_queued_one_is_kept() -> None:
    member = Member()
    watchdog = Watchdog()
    watchdog.watch(member, 300.0)
    watchdog.unwatch(member)
    watchdog.watch(member, 5.0)  # (a shorter timeout: the last command at shutdown)
    watchdog.check(5.0)
    assert member.expired_at == [5.0]
    watchdog.check(300.0)
    assert member.expired_at == [5.0]  # its old entry is skipped


def test_forgotten_members_are_not_kept() -> None:
    # Connections that closed while their entries were queued: the heap lets them go,
    # without waiting for a check (the watchdog sleeps until the first deadline, a
    # command timeout away, while a flood of short connections comes and goes).
    watchdog = Watchdog()
    alive = Member()
    watchdog.watch(alive, 10_000.0)
    gone = []
    for n in range(1000):
        member = Member()
        watchdog.watch(member, 300.0 + n)
        watchdog.forget(member)
        gone.append(weakref.ref(member))
    del member
    assert len(watchdog._heap) <= 2 * 64
    assert sum(ref() is not None for ref in gone) <= 2 * 64
    watchdog.check(5_000.0)  # the rest go when their entries come up
    assert watchdog._heap == [(10_000.0, alive)] and alive.expired_at == []
    assert all(ref() is None for ref in gone)
