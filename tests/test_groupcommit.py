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
        nursery.start_soon(one, 0)
        await wait_for(lambda: len(work.batches) == 1)  # in its worker thread
        for item in range(1, 20):
            nursery.start_soon(one, item)
        # The rest wait for the next batch, and nobody is done before its batch.
        await wait_for(lambda: len(commit._pending) == 19)
        await trio.sleep(0.05)
        assert done == [] and len(work.batches) == 1
        work.gate.set()
    assert sorted(done) == list(range(20))
    assert [sorted(batch) for batch in work.batches] == [[0], list(range(1, 20))]
    assert work.most_at_once == 1
    await wait_for(lambda: not commit._running)  # and the next item starts a batch at once
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
        nursery.start_soon(one, 0)
        await wait_for(lambda: len(batches) == 1)
        for item in range(1, 5):
            nursery.start_soon(one, item)
        await wait_for(lambda: len(commit._pending) == 4)
        gates[0].set()
        await wait_for(lambda: 0 in returned)
        assert returned == {0: 1}  # the others are in the second batch, not done yet
        await wait_for(lambda: len(batches) == 2)  # (the worker went straight on to it)
        await trio.sleep(0.05)
        assert returned == {0: 1}
        gates[1].set()
    assert [sorted(batch) for batch in batches] == [[0], [1, 2, 3, 4]]
    assert returned == {item: 1 if item == 0 else 2 for item in range(5)}


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
    assert returned.is_set()
    await wait_for(lambda: not commit._running)


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
    assert calls == [[1], [2]]
    await wait_for(lambda: not commit._running)


async def test_the_worker_goes_on_to_the_next_batch_without_the_event_loop() -> None:
    # Under load the event loop is busy: a batch that waited for it to be started would
    # add its delays to every commit. The worker takes what came during a batch itself.
    second_started = threading.Event()
    gates = [threading.Event(), threading.Event()]
    batches: list[list[int]] = []

    def work(items: list[int]) -> list[None]:
        batches.append(list(items))
        if len(batches) == 2:
            second_started.set()
        gates[len(batches) - 1].wait(10)
        return [None] * len(items)

    commit = GroupCommit(work)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit, 1)
        await wait_for(lambda: len(batches) == 1)
        nursery.start_soon(commit, 2)
        await wait_for(lambda: len(commit._pending) == 1)
        gates[0].set()
        # The event loop is blocked from here until the second batch has begun.
        assert second_started.wait(10)
        gates[1].set()
    assert batches == [[1], [2]]
