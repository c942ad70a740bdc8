"""One client session, as the application sees it: the decisions to make, in order.

``async for decision in session`` is the whole interface. Each step first applies the
application's answer to the previous decision (or that decision's default: envelope steps
the application moved past are accepted, a message is not), then lets the ``Exchange``
talk to the client until the engine asks for the next decision.

The application's time to decide is the deadline of a real cancel scope around its
handler, visible through ``trio.current_effective_deadline()``: set when a decision is
handed out, and lifted while the session then waits on the client if it could fire first
(``AppDeadline``). A handler that misses it, raises, or returns while the client is
still there has had its say: that decision and every later one get a temporary failure,
never an acceptance.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import trio

from . import _events as core
from ._appdeadline import AppDeadline
from ._authflow import AuthFlow
from ._certificates import prepare_client_certificates
from ._connection import UsageError, greeting
from ._decisions import Auth, Connect, DataStart, Decision, Hello, Mail, Message, Rcpt, TLSFailed
from ._exchange import Exchange, ExchangeTimeouts
from ._info import SessionInfo
from ._metrics import counting_observer, inner_observer, transaction_outcome
from ._observer import Observer
from ._replies import Reply
from ._sessionconfig import for_connection
from ._settings import Config
from ._tls import record_server_names
from ._tlsfailure import TLSFailure
from ._transaction import Transaction
from ._transactions import TransactionQueue
from ._xclient import apply_xclient

__all__ = ["Session", "forward_transactions"]

log = logging.getLogger("trio_smtpd")

# Why the application lost its say, and what every decision left gets instead.
_TIMED_OUT = (451, "4.4.3", "Timed out waiting for a decision; try again later")
_RAISED = (451, "4.3.0", "Local error in processing; try again later")
_GONE = (451, "4.3.0", "Not handled; try again later")
_MOVED_ON = " (accepted when the application moved on)"


class Session:
    """A client session: ``async for decision in session`` yields what to decide.

    Decisions come in protocol order: ``Connect``, ``Hello``, ``Auth``, ``Mail``,
    ``Rcpt``, ``DataStart``, ``Message``. Answer each with ``accept()``, ``reject()`` or
    ``tempfail()`` before asking for the next.
    """

    __slots__ = ("_app", "_auth", "_config", "_current", "_cut", "_decision_timeouts", "_exchange",
                 "_fallback", "_queue", "_stashed", "_transaction", "info",
                 "offer_starttls", "tls_failed")

    def __init__(self, exchange: Exchange, info: SessionInfo, config: Config, *,
                 transactions: TransactionQueue, app_deadline: AppDeadline) -> None:
        # (exchange.timeouts are the server's, made from config.timeouts)
        #: Facts about the connection, updated as the session goes on.
        self.info = info
        #: Set to False (before EHLO) to stop offering STARTTLS to this client, e.g. one
        #: whose TLS handshakes keep failing, so that it can still deliver in plaintext.
        self.offer_starttls = True
        #: True once a STARTTLS handshake with this client failed.
        self.tls_failed = False
        self._exchange = exchange
        self._queue = transactions
        self._apply(config, exchange.timeouts)
        self._current: Decision | None = None
        self._transaction: Transaction | None = None
        self._stashed: core.Event | None = None
        self._app = app_deadline
        self._fallback: tuple[int, str, str] | None = None  # once the application is gone
        self._cut: Reply | None = None  # the shutdown's last word, once its grace ran out

    @property
    def transaction(self) -> Transaction | None:
        """The transaction whose message is being received, if any."""
        return self._transaction

    @property
    def config(self) -> Config:
        """This connection's settings, the server's to begin with. At its ``Connect``
        decision, a handler may give it others (``dataclasses.replace(session.config,
        ...)``): limits, TLS, AUTH, the greeting, timeouts."""
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        if not isinstance(self._current, Connect) or self._current.decided:
            raise UsageError("a connection's config can be changed at its Connect "
                             "decision only, before answering it")
        self._apply(config, ExchangeTimeouts.of(config.timeouts))
        self._exchange.conn.config = for_connection(config, self.info)

    @property
    def observer(self) -> Observer | None:
        """Hears every line and reply of the session (a ``Transcript``, say); see
        ``Observer``. Set it at ``Connect`` to hear the greeting too."""
        return inner_observer(self._exchange.conn.observer)

    @observer.setter
    def observer(self, observer: Observer | None) -> None:
        metrics = self._config.metrics  # (it hears refusals through the same slot)
        self._exchange.conn.observer = (observer if metrics is None
                                        else counting_observer(metrics, observer))

    @property
    def reply_delay(self) -> float:
        """A tarpit: seconds to wait before each batch of replies (a sleeping task)."""
        return self._exchange.reply_delay

    @reply_delay.setter
    def reply_delay(self, seconds: float) -> None:
        if not seconds >= 0 or seconds == math.inf:
            raise ValueError("reply_delay must be a finite number of seconds, at least 0")
        self._exchange.reply_delay = seconds

    def __aiter__(self) -> AsyncIterator[Decision]:
        return self

    async def __anext__(self) -> Decision:
        # Talks to the client until the engine asks for a decision. (The loop is here,
        # not in a helper: one suspended call fewer for every session waiting on its
        # client; see benchmarks/README.md, "Memory per idle connection".)
        self._settle()
        while True:
            event = self._stashed or await self._exchange.next_event()
            self._stashed = None
            if event is None:
                raise StopAsyncIteration
            handle = _ON_EVENT.get(type(event))
            decision = handle(self, event) if handle else await self._slow_event(event)
            if decision is not None:
                self._current = decision
                self._app.hold(self._decision_timeouts[type(decision) is Message])
                return decision

    async def next_decision(self) -> Decision | None:
        """The next decision to make, or None once the session is over."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None

    async def body(self) -> AsyncIterator[bytes]:
        """Read the message body as it arrives, right after accepting ``DataStart``.

        Ends when the message is complete (the next decision is its ``Message``) or was
        aborted (``transaction.aborted`` is then True and no ``Message`` follows).
        """
        current = self._current
        if not isinstance(current, DataStart):
            raise UsageError("body() is for right after accepting a DataStart")
        transaction = current.transaction
        transaction._streamed = True
        self._settle()
        while (event := await self._exchange.next_event()) is not None:
            if type(event) is not core.MessageData:
                self._stashed = event
                if isinstance(event, core.MessageAborted | core.Reset):
                    self._abort(event)
                return
            transaction.size += len(event.data)
            self._app.hold(self._decision_timeouts[0])
            yield event.data
        transaction.aborted = True

    # ------------------------------------------------------------------ the server's side

    def _handler_raised(self) -> None:
        self._fallback = _RAISED

    async def _after_handler(self, scope: trio.CancelScope) -> None:
        """The handler has returned, raised, or run out of time (``scope`` was the
        application's): the rest of the session goes without it."""
        self._app.close()
        if self._cut is not None:  # (the shutdown's grace ran out, not the application's)
            await self._exchange.close(self._cut)
            return
        if scope.cancelled_caught:
            log.warning("session %s: the application took too long to decide", self.info.id)
            self._fallback = _TIMED_OUT
        if not self._exchange.closed:
            await self._finish(self._fallback or _GONE)

    def _cut_off(self, reply: Reply) -> None:
        """End of the shutdown grace period: stop the application, close with ``reply``."""
        self._cut = reply
        self._exchange.cut_off(reply)
        if self._app.scope is not None:
            self._app.scope.cancel()

    async def _finish(self, fallback: tuple[int, str, str]) -> None:
        """The rest of the session, every decision answered with ``fallback``."""
        self._fallback = fallback
        with contextlib.suppress(StopAsyncIteration):
            while True:
                await self.__anext__()

    def _apply(self, config: Config, timeouts: ExchangeTimeouts) -> None:
        self._config = config
        self._decision_timeouts = (config.timeouts.decision, config.timeouts.message_decision)
        self._exchange.timeouts = timeouts
        self._auth = AuthFlow.of(config, self.info)
        if config.tls is not None:
            record_server_names(config.tls)
            if config.client_certificates != "none":
                prepare_client_certificates(config.tls, config.client_certificates,
                                            config.client_ca)

    # ------------------------------------------------------------------ decisions

    def _settle(self) -> None:
        """Apply the answer to the current decision (or the default) to the engine."""
        decision, self._current = self._current, None
        if decision is None:
            return
        conn = self._exchange.conn
        if self._fallback is not None and decision._give_up(*self._fallback):
            return  # (a report: nothing to send)
        if not self.offer_starttls and conn.config.tls_available:
            conn.config = replace(conn.config, tls_available=False)
        kind = type(decision)
        if kind is Message:
            self._answer_message(decision)  # type: ignore[arg-type]
        elif kind is Auth:
            self._answer_auth(decision)  # type: ignore[arg-type]
        else:
            if not decision._answered:  # moved past: accepted, and too late to change
                decision._answered = True
                decision._why_answered = _MOVED_ON
            reply = decision._reply
            if kind is Connect and reply is not None and reply.code == 220:
                reply = greeting(conn.config, reply.lines)
            conn.respond(reply)
            self.info.helo = conn.hello_name

    def _answer_message(self, decision: Message) -> None:
        replies = decision.transaction._final_replies()
        self._transaction = None
        self._exchange.transaction_answered = True
        if self._config.metrics is not None:
            self._config.metrics.transaction(decision.transaction,
                                             transaction_outcome(replies))
        if self.info.lmtp:
            self._exchange.conn.respond_per_recipient(replies)
        else:
            self._exchange.conn.respond(replies[0])

    def _answer_auth(self, decision: Auth) -> None:
        conn = self._exchange.conn
        decision._settle(None, "accepted when the application moved on")
        accepted = decision.reply is None or decision.reply.is_positive
        if accepted:
            conn.auth_success(decision.identity)
            self.info.authenticated_as = decision.identity
        else:
            conn.auth_failure(decision.reply)
        if self._config.metrics is not None:
            self._config.metrics.auth(decision.mechanism, "success" if accepted else "refused")

    # ------------------------------------------------------------------ engine events

    def _on_hello(self, event: core.HelloCommand) -> Decision:
        return Hello(event.verb, event.name)

    def _on_mail(self, event: core.MailCommand) -> Decision:
        return Mail(event.sender, event.params)

    def _on_rcpt(self, event: core.RcptCommand) -> Decision:
        return Rcpt(core.Recipient(event.recipient, event.params))

    def _on_body_start(self, event: core.BodyStart) -> Decision:
        conn = self._exchange.conn
        assert conn.mail_params is not None
        self._transaction = Transaction(self.info.snapshot(), conn.sender, conn.mail_params,
                                        conn.recipients)
        return DataStart(event.method, self._transaction)

    def _on_data(self, event: core.MessageData) -> None:
        assert self._transaction is not None
        self._transaction._chunks.append(event.data)

    def _on_end(self, event: core.EndOfMessage) -> Decision:
        transaction = self._transaction
        assert transaction is not None
        transaction.received = datetime.now(UTC)
        if not transaction.streamed:
            transaction.size = event.size
        return Message(transaction)

    def _abort(self, event: core.MessageAborted | core.Reset) -> None:
        if self._transaction is not None:
            self._transaction.aborted = True
            if isinstance(event, core.MessageAborted):
                self._transaction.abort_reply = event.reply
            self._transaction._close_answers(_GONE, "the message was aborted")
            if self._config.metrics is not None:
                self._config.metrics.transaction(self._transaction, "aborted")
        self._transaction = None

    async def _slow_event(self, event: core.Event) -> Decision | None:
        if isinstance(event, core.AuthStart | core.AuthResponse):
            assert self._auth is not None
            return await self._auth.step(self._exchange.conn, event, self.info.tls)
        if isinstance(event, core.StartTLS):
            assert self._config.tls is not None
            tls = await self._exchange.start_tls(self._config.tls, self.info,
                                                 self._config.metrics)
            self.info.helo = self.info.authenticated_as = None  # (RFC 3207 4.2)
            if isinstance(tls, TLSFailure):
                self.tls_failed, self._fallback = True, _GONE  # (the session is over)
                return TLSFailed(tls.reason, tls.detail)
            self.info.tls = tls
            self._exchange.conn.config = for_connection(self._config, self.info)
        return None


async def forward_transactions(session: Session) -> None:
    """The default handler: accept every envelope step and hand each message to
    ``Server.transactions()``, waiting for its answer (within the message decision
    timeout, the session's cancel scope deadline like any handler's)."""
    async for decision in session:
        if isinstance(decision, Message):
            await session._queue.deliver(decision.transaction)


_ON_EVENT: dict[type[core.Event], Callable[[Session, Any], Decision | None]] = {
    core.ConnectionOpened: lambda session, event: Connect(session.info),
    core.HelloCommand: Session._on_hello,
    core.MailCommand: Session._on_mail,
    core.RcptCommand: Session._on_rcpt,
    core.BodyStart: Session._on_body_start,
    core.MessageData: Session._on_data,
    core.EndOfMessage: Session._on_end,
    core.MessageAborted: Session._abort,
    core.Reset: Session._abort,
    core.XclientCommand: lambda session, event: apply_xclient(session.info, event.attributes),
}
