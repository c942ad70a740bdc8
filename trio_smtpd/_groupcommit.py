"""Work on items in batches, one worker thread trip per batch: a group commit.

Items that come while a batch is in its worker thread wait, and go together in the next
batch: under load one trip (the fsyncs of a batch of messages and one of their
directory, or one database transaction) serves many messages, and the event loop hands
work to a thread and is woken once per batch rather than once per message. A batch is
started by the task whose item finds none under way; when it ends and items are
waiting, the first of them starts the next one, so that no task serves batches other
than its own for long. One batch at a time: two or four at once were measured and cost
more CPU per message than they saved in waiting (benchmarks/README.md).

A task's wait cannot be cancelled: what it waits for is a durable write that has begun,
and the batch it is in goes ahead whatever happens to the task.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

__all__ = ["GroupCommit"]

Item = TypeVar("Item")


class _Waiter(Generic[Item]):
    __slots__ = ("done", "error", "item", "woken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.woken = trio.Event()  # set when its batch is done, or when it is to lead one
        self.done = False
        self.error: BaseException | None = None


class GroupCommit(Generic[Item]):
    """``await commit(item)`` returns once a batch holding ``item`` has been done.

    ``work`` does a batch in a worker thread and returns, for each item, None or the
    exception that failed it; an exception it raises fails the whole batch."""

    def __init__(self, work: Callable[[list[Item]], Sequence[BaseException | None]]) -> None:
        self._work = work
        self._running = False
        #: Waiting for a batch; whoever is to lead the next one leaves this list.
        self._pending: list[_Waiter[Item]] = []

    async def __call__(self, item: Item) -> None:
        """Raises what failed ``item``."""
        waiter = _Waiter(item)
        with trio.CancelScope(shield=True):
            if not self._running:
                self._running = True
            else:
                self._pending.append(waiter)
                await waiter.woken.wait()
            if not waiter.done:  # ours to lead: the batch, then the turn handed on
                await self._run_batch(waiter)
                self._hand_on()
        if waiter.error is not None:
            raise waiter.error

    async def _run_batch(self, leader: _Waiter[Item]) -> None:
        batch = [leader, *self._pending]
        self._pending = []
        try:
            errors = list(await trio.to_thread.run_sync(self._work, [w.item for w in batch]))
            if len(errors) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(errors)} outcomes")
        except BaseException as exc:  # (the batch's, not one item's: each caller raises
            errors = [exc] * len(batch)  # it, and the next batch still gets its turn)
        for waiter, error in zip(batch, errors, strict=True):
            # A copy each: one exception object raised in several tasks would gather all
            # their tracebacks.
            waiter.error = None if error is None else copy.copy(error)
            waiter.done = True
            waiter.woken.set()

    def _hand_on(self) -> None:
        """The first item to have come since leads the next batch; or none is running."""
        if self._pending:
            self._pending.pop(0).woken.set()
        else:
            self._running = False
