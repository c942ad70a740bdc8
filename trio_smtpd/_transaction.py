"""One mail transaction and its answer, the part of the API that must never be unsafe.

An SMTP transaction gets one answer. An LMTP transaction gets one per recipient
(RFC 2033 4.2): either all at once (``accept()``, ``reject()``, ``tempfail()``) or each by
itself (``accept_recipient(i)`` and the like), never a mix, and never two answers for one
recipient, so that a later call can never turn a refusal into an acceptance.
``complete()`` sends what was answered so far and tempfails the rest. Once the server has
answered for the application (its time ran out, the consumer went away), any answer
raises ``UsageError``: a decision made too late is an error, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import trio

from ._address import Address
from ._connection import UsageError
from ._events import Recipient
from ._info import SessionInfo
from ._params import MailParams
from ._replies import Reply

__all__ = ["Transaction"]

Text = str | Sequence[str]
_UNANSWERED = 451, "4.3.0", "Not answered; try again later"


class Transaction:
    """One mail transaction: the envelope, the message, and the session it came in on.

    Made by the server; applications read it and answer it.
    """

    def __init__(self, info: SessionInfo, sender: Address | None, mail_params: MailParams,
                 recipients: list[Recipient]) -> None:
        #: The connection, as it was when the message arrived.
        self.info = info
        #: The envelope sender; None for the null reverse-path ``<>``.
        self.sender = sender
        self.mail_params = mail_params
        #: The accepted recipients, in RCPT order.
        self.recipients = recipients
        #: When the message (or, before that, the data command) arrived, in UTC.
        self.received = datetime.now(UTC)
        #: The message size in octets (counted as it streams, when streamed).
        self.size = 0
        #: True once the client went away or the message was refused before its end.
        self.aborted = False
        #: What the client was told when the protocol engine refused the message (too
        #: large, bare line ending, line too long); None otherwise.
        self.abort_reply: Reply | None = None
        self._chunks: list[bytes] = []
        self._streamed = False
        self._replies: list[Reply | _Unanswered | None] = [_NOT_YET] * len(recipients)
        self._answered = 0  # recipients answered one by one
        self._whole = False  # answered all at once
        self._closed_because = ""  # set once answering is over
        self._decided = False
        self._done: trio.Event | None = None  # made when someone waits for the answer

    # ------------------------------------------------------------------ the message

    @property
    def data(self) -> bytes:
        """The message as received (dot-unstuffed); empty if it was streamed."""
        if len(self._chunks) != 1:
            self._chunks[:] = [b"".join(self._chunks)]
        return self._chunks[0]

    @property
    def streamed(self) -> bool:
        """True when the application read the body itself with ``session.body()``."""
        return self._streamed

    @property
    def lmtp(self) -> bool:
        """True for an LMTP transaction: one answer per recipient."""
        return self.info.lmtp

    # ------------------------------------------------------------------ answering

    @property
    def decided(self) -> bool:
        """True once every recipient has its answer (or answering is over)."""
        return self._decided

    @property
    def replies(self) -> list[Reply | None]:
        """The answer for each recipient so far; None is the default positive reply."""
        return [r if not isinstance(r, _Unanswered) else r.reply for r in self._replies]

    def accept(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        """Accept the message (every recipient, for LMTP): 250."""
        self._answer_all(_positive(code, text, enhanced, "2.0.0"))

    def reject(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        """Refuse the message for good (550 by default; a 4xx code is allowed)."""
        self._answer_all(_negative(code, text, enhanced, 550, "Message rejected"))

    def tempfail(self, code: int | None = None, text: Text | None = None,
                 enhanced: str | None = None) -> None:
        """Refuse the message for now (451 by default): the client retries later."""
        self._answer_all(_transient(code, text, enhanced))

    def accept_recipient(self, index: int, code: int | None = None, text: Text | None = None,
                         enhanced: str | None = None) -> None:
        """LMTP: accept the message for ``recipients[index]``."""
        self._answer_one(index, _positive(code, text, enhanced, "2.1.5"))

    def reject_recipient(self, index: int, code: int | None = None, text: Text | None = None,
                         enhanced: str | None = None) -> None:
        """LMTP: refuse the message for ``recipients[index]`` (550 by default)."""
        self._answer_one(index, _negative(code, text, enhanced, 550, "Rejected"))

    def tempfail_recipient(self, index: int, code: int | None = None,
                           text: Text | None = None, enhanced: str | None = None) -> None:
        """LMTP: refuse the message for ``recipients[index]`` for now (451 by default)."""
        self._answer_one(index, _transient(code, text, enhanced))

    def complete(self) -> None:
        """LMTP: send the answers given so far; recipients without one get 451."""
        self._close_answers(_UNANSWERED, "completed")

    # ------------------------------------------------------------------ for the server

    async def _wait_decided(self) -> None:
        if not self._decided:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()

    def _set_decided(self) -> None:
        self._decided = True
        if self._done is not None:
            self._done.set()

    def _close_answers(self, default: tuple[int, str, str], why: str) -> None:
        """Answering is over: unanswered recipients get ``default``; later answers raise."""
        if self._closed_because:
            return
        self._closed_because = why
        if not self._whole and self._answered < len(self._replies):
            reply = _Unanswered(Reply(default[0], default[2], default[1]))
            self._replies = [reply if r is _NOT_YET else r for r in self._replies]
        self._set_decided()

    def _final_replies(self) -> list[Reply | None]:
        """What to send: one reply per recipient (unanswered: 451)."""
        self._close_answers(_UNANSWERED, "the session moved on")
        if self._whole:
            return self._replies  # type: ignore[return-value]  # (no _Unanswered in it)
        return self.replies

    def _answer_all(self, reply: Reply | None) -> None:
        self._check_open()
        if self._answered:
            first = next(i for i, r in enumerate(self._replies) if r is not _NOT_YET)
            raise UsageError(f"recipient {first} was already answered "
                             f"({self._describe(first)}); answer the others one by one")
        self._replies = [reply] * len(self._replies)
        self._whole = True
        self._set_decided()

    def _answer_one(self, index: int, reply: Reply | None) -> None:
        if not self.lmtp:
            raise UsageError("per-recipient answers are for LMTP; answer the message")
        self._check_open()
        if self._replies[index] is not _NOT_YET:
            raise UsageError(f"recipient {index} was already answered "
                             f"({self._describe(index)})")
        self._replies[index] = reply
        self._answered += 1
        if self._answered == len(self._replies):
            self._set_decided()

    def _check_open(self) -> None:
        if self._closed_because:
            raise UsageError(f"too late: answering this transaction is over "
                             f"({self._closed_because})")
        if self._whole:
            raise UsageError(f"the transaction was already answered "
                             f"({self._describe(0)})")

    def _describe(self, index: int) -> str:
        reply = self._replies[index]
        return "accepted" if reply is None else str(reply)

    def __repr__(self) -> str:
        return (f"Transaction(<{self.sender or ''}> to {len(self.recipients)} "
                f"recipient(s), {self.size} octets)")


class _Unanswered:
    """A recipient the application did not answer, and what the server said instead."""

    __slots__ = ("reply",)

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


_NOT_YET = _Unanswered(Reply(451, "(no answer yet)", "4.3.0"))  # compared by identity


def _positive(code: int | None, text: Text | None, enhanced: str | None,
              default_enhanced: str) -> Reply | None:
    if code is None and text is None and enhanced is None:
        return None
    code = 250 if code is None else code
    if code != 250:  # (the reply to a message's end: RFC 5321 4.3.2, RFC 2033 4.2)
        raise ValueError(f"accepting a message takes code 250, not {code}")
    return Reply(code, "OK" if text is None else text, enhanced or default_enhanced)


def _negative(code: int | None, text: Text | None, enhanced: str | None,
              default_code: int, default_text: str) -> Reply:
    code = default_code if code is None else code
    if not 400 <= code < 600:
        raise ValueError(f"reject() takes a 4xx or 5xx code, not {code}")
    return Reply(code, default_text if text is None else text,
                 enhanced or f"{code // 100}.0.0")


def _transient(code: int | None, text: Text | None, enhanced: str | None) -> Reply:
    code = 451 if code is None else code
    if not 400 <= code < 500:
        raise ValueError(f"tempfail() takes a 4xx code, not {code}")
    return Reply(code, "Temporary failure, try again later" if text is None else text,
                 enhanced or ("4.3.0" if code == 451 else "4.0.0"))
