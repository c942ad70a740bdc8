"""Work on items in batches, in a worker thread that goes from batch to batch: a group
commit.

Items that come while a batch is under way wait, and go together in the next batch:
under load one batch (the fsyncs of several messages and one of their directory, or one
database transaction) serves many messages. The first item that finds no worker thread
starts one; it takes everything waiting, works on it, wakes the callers of that batch,
and takes what came meanwhile, until nothing is waiting. So under load the worker thread
never waits for the event loop between batches, and the event loop is woken once per
batch rather than once per item. One batch at a time: two or four at once were measured
and cost more CPU per message than they saved in waiting (benchmarks/README.md).

A task's wait cannot be cancelled: what it waits for is a durable write that has begun,
and the batch it is in goes ahead whatever happens to the task.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

if TYPE_CHECKING:
    import outcome

__all__ = ["GroupCommit"]

Item = TypeVar("Item")


class _Waiter(Generic[Item]):
    __slots__ = ("error", "item", "token", "woken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.token = trio.lowlevel.current_trio_token()  # (the run to wake it in)
        self.woken = trio.Event()  # set when its batch is done
        self.error: BaseException | None = None


class GroupCommit(Generic[Item]):
    """``await commit(item)`` returns once a batch holding ``item`` has been done.

    ``work`` does a batch in a worker thread and returns, for each item, None or the
    exception that failed it; an exception it raises fails the whole batch."""

    def __init__(self, work: Callable[[list[Item]], Sequence[BaseException | None]]) -> None:
        self._work = work
        #: Guards the two below, shared with the worker thread.
        self._lock = threading.Lock()
        #: Waiting for the next batch.
        self._pending: list[_Waiter[Item]] = []
        #: Whether a worker thread is working through the batches.
        self._running = False

    async def __call__(self, item: Item) -> None:
        """Raises what failed ``item``."""
        waiter = _Waiter(item)
        with self._lock:
            self._pending.append(waiter)
            start, self._running = not self._running, True
        if start:
            self._start_worker()
        with trio.CancelScope(shield=True):
            await waiter.woken.wait()
        if waiter.error is not None:
            raise waiter.error

    def _start_worker(self) -> None:
        try:
            trio.lowlevel.start_thread_soon(self._work_through, _no_outcome)
        except BaseException:  # (no thread to be had: nobody must wait for one)
            with self._lock:
                waiting, self._pending, self._running = self._pending, [], False
            self._wake(waiting, [RuntimeError("no worker thread for the commit")] * len(waiting))
            raise

    def _work_through(self) -> None:
        """In the worker thread: batch after batch, until nothing is waiting."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._running = False
                    return
            self._wake(batch, self._outcomes(batch))

    def _outcomes(self, batch: list[_Waiter[Item]]) -> list[BaseException | None]:
        try:
            errors = list(self._work([w.item for w in batch]))
            if len(errors) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(errors)} outcomes")
        except BaseException as exc:  # (the batch's, not one item's: each caller raises
            errors = [exc] * len(batch)  # it, and the next batch still gets its turn)
        return errors

    @staticmethod
    def _wake(batch: list[_Waiter[Item]], errors: list[BaseException | None]) -> None:
        """Tell each caller of ``batch`` its outcome: one wake-up of each run it is in."""
        for waiter, error in zip(batch, errors, strict=True):
            # A copy each: one exception object raised in several tasks would gather all
            # their tracebacks.
            waiter.error = None if error is None else copy.copy(error)
        for token in {id(w.token): w.token for w in batch}.values():
            mine = [w for w in batch if w.token is token]
            with suppress(trio.RunFinishedError):  # (no run: nobody is waiting there)
                token.run_sync_soon(_set_all, mine)


def _set_all(waiters: list[_Waiter[Item]]) -> None:
    for waiter in waiters:
        waiter.woken.set()


def _no_outcome(result: outcome.Outcome[None]) -> None:
    """The worker's own result: it returns None, and catches what its work raises."""
    result.unwrap()
