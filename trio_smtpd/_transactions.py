"""``Server.transactions()``: complete messages from every connection, for consumers.

Each message waits in the server's ``TransactionQueue`` until a consumer takes it, and its
client waits until the consumer answers it (bounded by ``Timeouts.message_decision``, the
cancel scope deadline of the session that delivered it). Nobody may be left waiting on a
consumer that is gone: once the last consumer has closed, every message queued and every
later one is answered 451 at once. A consumer that ends by an exception (a cancellation,
Ctrl+C) or is dropped also answers 451 for each message it took and left unanswered; one
that ends normally leaves those to whoever it handed them to.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from types import TracebackType

import trio

from ._transaction import Transaction

__all__ = ["TransactionQueue", "Transactions"]

log = logging.getLogger("trio_smtpd")

_NO_CONSUMER = (451, "4.3.0", "Nobody is taking messages now; try again later")
_CONSUMER_FAILED = (451, "4.3.0", "Message not handled; try again later")


class TransactionQueue:
    """Messages waiting for a consumer of ``Server.transactions()``."""

    def __init__(self) -> None:
        self._waiting: deque[Transaction] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._consumers = 0
        self._had_consumer = False
        self._ended = False

    async def deliver(self, transaction: Transaction) -> None:
        """Hand ``transaction`` to a consumer and wait until it is answered."""
        if self._ended or (self._had_consumer and not self._consumers):
            transaction._close_answers(_NO_CONSUMER, "nobody is taking messages")
            return
        self._waiting.append(transaction)
        self._lot.unpark()
        try:
            await transaction._wait_decided()
        finally:
            if transaction in self._waiting:  # (given up: the session's time ran out)
                self._waiting.remove(transaction)

    def consumer(self) -> Transactions:
        self._consumers += 1
        self._had_consumer = True
        return Transactions(self)

    def end(self) -> None:
        """The server is done: consumers' iterations end, nothing more is delivered."""
        self._ended = True
        self._fail_waiting(_NO_CONSUMER)
        self._lot.unpark_all()

    def _consumer_closed(self) -> None:
        self._consumers -= 1
        if not self._consumers:
            self._fail_waiting(_NO_CONSUMER)

    def _fail_waiting(self, reply: tuple[int, str, str]) -> None:
        while self._waiting:
            self._waiting.popleft()._close_answers(reply, "nobody is taking messages")

    async def _take(self) -> Transaction | None:
        while not self._waiting:
            if self._ended:
                return None
            await self._lot.park()
        return self._waiting.popleft()


class Transactions:
    """An async iterator (and async context manager) over complete transactions.

    ``async with server.transactions() as transactions: async for tx in transactions:``.
    Answer each ``tx``; the iteration ends once the server has shut down.
    """

    def __init__(self, queue: TransactionQueue) -> None:
        self._queue: TransactionQueue | None = queue
        self._taken: list[Transaction] = []

    def __aiter__(self) -> Transactions:
        return self

    async def __anext__(self) -> Transaction:
        queue = self._queue
        if queue is None:
            raise StopAsyncIteration
        self._taken = [tx for tx in self._taken if not tx.decided]
        try:
            transaction = await queue._take()
        except BaseException:
            self._close(failed=True)
            raise
        if transaction is None:
            self._close(failed=False)
            raise StopAsyncIteration
        self._taken.append(transaction)
        return transaction

    async def __aenter__(self) -> Transactions:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._close(failed=exc is not None)

    async def aclose(self) -> None:
        """Stop consuming; messages not yet taken go back to their clients with 451."""
        self._close(failed=False)

    def __del__(self) -> None:
        if self._queue is not None:
            # (collected after the trio run ended: nobody is left to tell)
            with contextlib.suppress(RuntimeError):
                self._close(failed=True)

    def _close(self, *, failed: bool) -> None:
        queue, self._queue = self._queue, None
        if queue is None:
            return
        if failed:
            for transaction in self._taken:
                transaction._close_answers(_CONSUMER_FAILED, "its consumer went away")
        self._taken = []
        queue._consumer_closed()
