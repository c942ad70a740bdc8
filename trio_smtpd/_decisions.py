"""The decisions an application makes, as values it can inspect and answer.

Each decision event carries what the client asked for and three ways to answer it:
``accept()``, ``reject()`` (5xx by default) and ``tempfail()`` (4xx). An event left
unanswered gets its documented default when the application moves on: envelope steps
are accepted, a message is tempfailed (451), so a message is never acknowledged unless
the application said so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import trio

from ._address import Address
from ._params import MailParams, RcptParams
from ._replies import Reply
from ._sasl import Credentials

__all__ = [
    "Auth",
    "Connect",
    "DataStart",
    "Decision",
    "Hello",
    "Mail",
    "Message",
    "Rcpt",
    "Recipient",
    "SessionInfo",
    "TLSInfo",
    "Transaction",
]

_NOT_HANDLED = Reply(451, "Message not handled; try again later", "4.3.0")


def _reply(code: int, text: str, enhanced: str | None) -> Reply:
    return Reply(code, text, enhanced or f"{code // 100}.0.0")


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated on a TLS connection."""

    version: str | None
    cipher: str | None
    #: The client certificate as ``ssl.SSLSocket.getpeercert()`` gives it, if one was sent
    #: and the context asked for it.
    peer_certificate: dict[str, object] | None = None
    #: The server name the client asked for (SNI), if it sent one.
    server_name: str | None = None


@dataclass(slots=True)
class SessionInfo:
    """Facts about one client connection, updated as the session goes on."""

    id: str
    peer: tuple[str, int] | None
    local: tuple[str, int] | None
    lmtp: bool
    started: datetime
    helo: str | None = None
    tls: TLSInfo | None = None
    authenticated_as: str | None = None

    def snapshot(self) -> SessionInfo:
        # (by hand: dataclasses.replace costs more than the rest of a message's bookkeeping)
        return SessionInfo(self.id, self.peer, self.local, self.lmtp, self.started,
                           self.helo, self.tls, self.authenticated_as)


class Decision:
    """Base class of the events an application answers."""

    _accept_code = 250
    _accept_enhanced: str | None = "2.0.0"
    _accept_text = "OK"
    _reject_code = 550

    def __init__(self) -> None:
        self.reply: Reply | None = None
        self.decided = False

    def accept(self, text: str | None = None) -> None:
        """Say yes; ``text`` replaces the default reply text."""
        self._decide(None if text is None else
                     Reply(self._accept_code, text, self._accept_enhanced))

    def reject(self, code: int | None = None, text: str = "Rejected",
               enhanced: str | None = None) -> None:
        """Say no for good (5xx; ``code`` may also be a 4xx)."""
        code = self._reject_code if code is None else code
        if code < 400:
            raise ValueError("reject() takes a 4xx or 5xx code; use accept()")
        self._decide(_reply(code, text, enhanced))

    def tempfail(self, text: str = "Temporary failure, try again later",
                 enhanced: str | None = None, code: int = 451) -> None:
        """Say not now (4xx): the client will retry later."""
        if not 400 <= code < 500:
            raise ValueError("tempfail() takes a 4xx code")
        self._decide(_reply(code, text, enhanced))

    def _decide(self, reply: Reply | None) -> None:
        self.reply = reply
        self.decided = True


class Connect(Decision):
    """A client connected. Reject to refuse it with 554 (it may still say QUIT)."""

    _accept_code = 220
    _accept_enhanced = None
    _reject_code = 554

    def __init__(self, session: SessionInfo) -> None:
        super().__init__()
        self.session = session

    def tempfail(self, text: str = "Service not available, try again later",
                 enhanced: str | None = None, code: int = 421) -> None:
        super().tempfail(text, enhanced, code)

    def __repr__(self) -> str:
        return f"Connect(peer={self.session.peer!r})"


class Hello(Decision):
    def __init__(self, verb: Literal["HELO", "EHLO", "LHLO"], name: str) -> None:
        super().__init__()
        self.verb = verb
        self.name = name

    def __repr__(self) -> str:
        return f"Hello({self.verb} {self.name!r})"


class Auth(Decision):
    """AUTH succeeded against the authenticator; accept (235) or refuse (535) the identity."""

    _accept_code = 235
    _accept_enhanced = "2.7.0"
    _reject_code = 535

    def __init__(self, mechanism: str, identity: str, credentials: Credentials) -> None:
        super().__init__()
        self.mechanism = mechanism
        self.identity = identity
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"Auth({self.mechanism} {self.identity!r})"


class Mail(Decision):
    _accept_enhanced = "2.1.0"

    def __init__(self, sender: Address | None, params: MailParams) -> None:
        super().__init__()
        self.sender = sender
        self.params = params

    def __repr__(self) -> str:
        return f"Mail(<{self.sender or ''}>)"


class Rcpt(Decision):
    _accept_enhanced = "2.1.5"

    def __init__(self, recipient: Address, params: RcptParams) -> None:
        super().__init__()
        self.recipient = recipient
        self.params = params

    def __repr__(self) -> str:
        return f"Rcpt(<{self.recipient}>)"


class DataStart(Decision):
    """DATA or the first BDAT chunk. Accept, then optionally stream the body with
    ``session.body()``; otherwise it is collected into ``Message.transaction.data``."""

    _accept_code = 354
    _accept_enhanced = None
    _reject_code = 554

    def __init__(self, method: Literal["DATA", "BDAT"], transaction: Transaction) -> None:
        super().__init__()
        self.method = method
        self.transaction = transaction

    def __repr__(self) -> str:
        return f"DataStart({self.method})"


@dataclass(frozen=True, slots=True)
class Recipient:
    address: Address
    params: RcptParams


@dataclass(eq=False)
class Transaction:
    """One mail transaction: the envelope, the message, and the session it came in on.

    For LMTP, answer each recipient with ``accept_recipient``/``reject_recipient``;
    ``accept()``, ``reject()`` and ``tempfail()`` answer all of them at once.
    """

    session: SessionInfo
    sender: Address | None
    mail_params: MailParams
    recipients: list[Recipient]
    received: datetime
    chunks: list[bytes] = field(default_factory=list, repr=False)
    size: int = 0
    #: True when the application read the body itself with ``session.body()``.
    streamed: bool = False
    #: True once the client went away or the message was refused before its end.
    aborted: bool = False
    #: What the client was told when the protocol engine refused the message (too large,
    #: bare line ending, line too long); None if it was not refused or the client left.
    abort_reply: Reply | None = None
    #: The final reply (SMTP) or replies (LMTP), once decided.
    replies: list[Reply | None] | None = field(default=None, repr=False)
    _done: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def data(self) -> bytes:
        """The message as received (dot-unstuffed), unless it was streamed."""
        if len(self.chunks) != 1:
            self.chunks[:] = [b"".join(self.chunks)]
        return self.chunks[0]

    @property
    def lmtp(self) -> bool:
        return self.session.lmtp

    @property
    def decided(self) -> bool:
        return self._done.is_set()

    def accept(self, text: str | None = None) -> None:
        reply = None if text is None else Reply(250, text, "2.0.0")
        self._decide_all(reply)

    def reject(self, code: int = 550, text: str = "Message rejected",
               enhanced: str | None = None) -> None:
        if code < 400:
            raise ValueError("reject() takes a 4xx or 5xx code; use accept()")
        self._decide_all(_reply(code, text, enhanced))

    def tempfail(self, text: str = "Temporary failure, try again later",
                 enhanced: str | None = None) -> None:
        self._decide_all(_reply(451, text, enhanced))

    def accept_recipient(self, index: int, text: str | None = None) -> None:
        self._decide_one(index, None if text is None else Reply(250, text, "2.1.5"))

    def reject_recipient(self, index: int, code: int = 550, text: str = "Rejected",
                         enhanced: str | None = None) -> None:
        if code < 400:
            raise ValueError("reject_recipient() takes a 4xx or 5xx code")
        self._decide_one(index, _reply(code, text, enhanced))

    def finish(self) -> None:
        """LMTP: the per-recipient answers are complete (unanswered ones are accepted)."""
        if self.replies is None:
            self.replies = [None] * len(self.recipients)
        self._done.set()

    def _decide_all(self, reply: Reply | None) -> None:
        # A decision for a transaction the client already abandoned is harmless.
        self.replies = [reply] * len(self.recipients)
        self._done.set()

    def _decide_one(self, index: int, reply: Reply | None) -> None:
        if not self.lmtp:
            raise ValueError("per-recipient replies are for LMTP")
        if self.replies is None:
            self.replies = [_UNSET] * len(self.recipients)
        self.replies[index] = reply
        if all(r is not _UNSET for r in self.replies):
            self._done.set()

    def final_replies(self) -> Sequence[Reply | None]:
        """What to answer, with unset recipients accepted and an unanswered message 451."""
        if not self._done.is_set() or self.replies is None:
            return [_NOT_HANDLED] * len(self.recipients)
        return [None if r is _UNSET else r for r in self.replies]


_UNSET = Reply(554, "(no answer yet)")  # compared by identity; no client ever sees it


class Message(Decision):
    """The message has arrived: accept it only once it is safe (stored, relayed...)."""

    def __init__(self, transaction: Transaction) -> None:
        super().__init__()
        self.transaction = transaction

    def accept(self, text: str | None = None) -> None:
        self.transaction.accept(text)
        self.decided = True

    def reject(self, code: int | None = None, text: str = "Message rejected",
               enhanced: str | None = None) -> None:
        self.transaction.reject(550 if code is None else code, text, enhanced)
        self.decided = True

    def tempfail(self, text: str = "Temporary failure, try again later",
                 enhanced: str | None = None, code: int = 451) -> None:
        self.transaction._decide_all(_reply(code, text, enhanced))
        self.decided = True

    def __repr__(self) -> str:
        return f"Message({self.transaction.size} octets)"
