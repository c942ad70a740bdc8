"""The group commit behind durable delivery: batches, lanes, errors, cancellation."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio

from trio_smtpd._groupcommit import GroupCommit


class GatedWork:
    """Batches that wait for ``gate`` in their worker thread, and what each held."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> Sequence[BaseException | None]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.batches.append(list(items))
        self.gate.wait(10)
        with self._lock:
            self.running -= 1
        return [ValueError(item) if item < 0 else None for item in items]


async def wait_for(condition: object) -> None:
    with trio.fail_after(10):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_items_that_come_while_a_batch_is_under_way_share_the_next_one() -> None:
    work = GatedWork()
    commit = GroupCommit(work)
    done: list[int] = []

    async def one(item: int) -> None:
        await commit(item)
        done.append(item)

    async with trio.open_nursery() as nursery:
        for item in range(20):
            nursery.start_soon(one, item)
        # One batch is under way, with the item that found none; the rest wait, and
        # nobody is done before its batch.
        await wait_for(lambda: len(work.batches) == 1 and len(commit._pending) == 19)
        assert done == []
        work.gate.set()
    assert sorted(done) == list(range(20))
    assert [len(batch) for batch in work.batches] == [1, 19]
    assert sorted(item for batch in work.batches for item in batch) == list(range(20))
    assert work.most_at_once == 1
    assert not commit._running  # and the next item starts a batch at once
    work.gate.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 20)
        await wait_for(lambda: len(work.batches) == 3)
        work.gate.set()
    assert work.batches[-1] == [20]


async def test_a_caller_returns_only_once_its_own_batch_is_done() -> None:
    # The durable promise: no caller is told its item is done while the batch holding
    # it is still in its worker thread.
    batches: list[list[int]] = []
    returned: dict[int, int] = {}  # item: how many batches had finished by then
    finished = 0
    gates = [threading.Event() for _ in range(3)]

    def work(items: list[int]) -> list[None]:
        nonlocal finished
        batches.append(list(items))
        gates[len(batches) - 1].wait(10)
        finished += 1
        return [None] * len(items)

    commit = GroupCommit(work)

    async def one(item: int) -> None:
        await commit(item)
        returned[item] = finished

    async with trio.open_nursery() as nursery:
        for item in range(5):
            nursery.start_soon(one, item)
        await wait_for(lambda: len(commit._pending) == 4)
        [[first]] = batches
        gates[0].set()
        await wait_for(lambda: first in returned)
        assert returned == {first: 1}  # the others are in the second batch, not done yet
        gates[1].set()
    assert [len(batch) for batch in batches] == [1, 4]
    assert returned == {item: 1 if item == first else 2 for item in range(5)}


async def test_an_item_that_fails_fails_alone_and_a_failing_batch_fails_all() -> None:
    work = GatedWork()
    work.gate.set()
    commit = GroupCommit(work)
    outcomes: dict[int, BaseException | None] = {}

    async def one(item: int) -> None:
        try:
            await commit(item)
        except ValueError as exc:
            outcomes[item] = exc
        else:
            outcomes[item] = None

    async with trio.open_nursery() as nursery:
        for item in (1, -2, 3):
            nursery.start_soon(one, item)
    assert outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[-2], ValueError) and outcomes[-2].args == (-2,)

    def broken(items: list[int]) -> list[None]:
        raise OSError(5, "I/O error")

    failing = GroupCommit(broken)
    errors: list[BaseException] = []

    async def doomed() -> None:
        with pytest.raises(OSError) as info:
            await failing(0)
        errors.append(info.value)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(doomed)
    assert [e.errno for e in errors] == [5, 5, 5]  # type: ignore[attr-defined]
    assert len({id(e) for e in errors}) == 3  # each its own copy, its own traceback


async def test_work_that_miscounts_its_outcomes_fails_the_batch() -> None:
    commit = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="got 0 outcomes"):
        await commit(1)


async def test_a_cancelled_caller_still_has_its_item_done_before_it_returns() -> None:
    work = GatedWork()
    commit = GroupCommit(work)
    returned = trio.Event()

    async def cancelled_caller() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await commit(7)  # (shielded: the cancel waits for the commit)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancelled_caller)
        await wait_for(lambda: work.batches == [[7]])
        await trio.sleep(0.05)
        assert not returned.is_set()
        work.gate.set()
    assert returned.is_set() and not commit._running


async def test_a_batch_that_raises_past_exception_still_hands_on_its_turn() -> None:
    # Even an exception that is no Exception (a KeyboardInterrupt in the worker thread)
    # reaches every caller of its batch, and the next batch still runs.
    calls: list[list[int]] = []

    def work(items: list[int]) -> list[None]:
        calls.append(list(items))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return [None] * len(items)

    commit = GroupCommit(work)
    with pytest.raises(KeyboardInterrupt):
        await commit(1)
    await commit(2)
    assert calls == [[1], [2]] and not commit._running
