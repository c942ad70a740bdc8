"""One client connection: pumps bytes between a trio stream and the protocol engine, and
hands the engine's decisions to the application as an async iterator.

The session runs in the connection's own task and iterating it drives the protocol: each
``__anext__`` first applies the application's answer to the previous decision, then reads
and writes until the engine has a new decision to ask about. No extra task, no channel:
an idle connection costs one task and its buffers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import trio

from . import _events as core
from ._connection import NEED_DATA, Mode, ServerConnection
from ._decisions import (
    Auth,
    Connect,
    DataStart,
    Decision,
    Hello,
    Mail,
    Message,
    Rcpt,
    Recipient,
    SessionInfo,
    TLSInfo,
    Transaction,
)
from ._replies import Reply
from ._sasl import Challenge, Credentials, Failed, Mechanism, Verify, new_mechanism

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Session"]

log = logging.getLogger("trio_smtpd")

_RECEIVE_SIZE = 65536
_TIMEOUT = Reply(421, "Timeout, closing connection", "4.4.2")
_LOCAL_ERROR = Reply(451, "Local error in processing", "4.3.0")
_AUTH_TEMP = Reply(454, "Temporary authentication failure", "4.7.0")

Authenticator = Callable[[Credentials], Awaitable[str | None]]


class SessionClosed(Exception):
    """The client went away, timed out, or broke TLS: nothing more can be said to it."""


class Session:
    """A client session; ``async for event in session`` yields its decisions in order."""

    __slots__ = (
        "_conn",
        "_current",
        "_current_core",
        "_line_deadline",
        "_mechanism",
        "_stashed",
        "_stream",
        "_transaction",
        "app_scope",
        "busy",
        "closed",
        "closing_reply",
        "config",
        "idle_scope",
        "info",
        "offer_starttls",
        "reply_delay",
        "server",
        "tls_failed",
    )

    def __init__(self, server: Server, stream: trio.abc.Stream, info: SessionInfo) -> None:
        self.server = server
        self.config = server.config
        self.info = info
        self._stream = stream
        self._conn = ServerConnection(server.protocol_config, tls_active=info.tls is not None)
        self._current: Decision | None = None
        self._current_core: core.Decision | None = None
        self._transaction: Transaction | None = None
        self._stashed: core.Event | None = None
        self._mechanism: Mechanism | None = None
        self._line_deadline: float | None = None
        #: Set by the server: the application's cancel scope, given a deadline while a
        #: decision is out so a slow application cannot hold a client forever.
        self.app_scope: trio.CancelScope | None = None
        #: Set by the server to ask an idle session to end (graceful shutdown).
        self.idle_scope: trio.CancelScope | None = None
        self.closing_reply: Reply | None = None
        self.busy = False
        self.closed = False
        #: Tarpit: seconds to wait before each batch of replies (costs a sleeping task).
        self.reply_delay = 0.0
        #: Set to False (at Connect, before EHLO) to stop offering STARTTLS to this client,
        #: e.g. one whose TLS handshakes keep failing, so it can still deliver in plaintext.
        self.offer_starttls = True
        #: True once a STARTTLS handshake with this client failed.
        self.tls_failed = False

    # ------------------------------------------------------------------ public API

    @property
    def transaction(self) -> Transaction | None:
        """The transaction being received, if any."""
        return self._transaction

    def __aiter__(self) -> AsyncIterator[Decision]:
        return self

    async def __anext__(self) -> Decision:
        event = await self.next_decision()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next_decision(self) -> Decision | None:
        """The next decision to make, or None once the session is over."""
        self._resume()
        while True:
            event = await self._next_core_event()
            if event is None:
                return None
            try:
                decision = await self._wrap(event)
            except SessionClosed:  # STARTTLS or AUTH ended the session
                return None
            if decision is not None:
                assert isinstance(event, core.Decision)
                self._current, self._current_core = decision, event
                if self.app_scope is not None:
                    self.app_scope.deadline = trio.current_time() + self._decision_timeout(
                        decision)
                return decision

    async def body(self) -> AsyncIterator[bytes]:
        """Stream the message body after accepting ``DataStart`` (bounded memory).

        Ends when the message is complete (the next event is its ``Message``) or was
        aborted (``transaction.aborted`` is then True and no ``Message`` follows).
        """
        if not isinstance(self._current, DataStart):
            raise RuntimeError("body() is for right after a DataStart decision")
        transaction = self._current.transaction
        transaction.streamed = True
        self._resume()
        while True:
            event = await self._next_core_event()
            if event is None:
                transaction.aborted = True
                return
            if isinstance(event, core.MessageData):
                transaction.size += len(event.data)
                yield event.data
                continue
            self._stashed = event
            if isinstance(event, core.EndOfMessage | core.MessageAborted | core.Reset):
                if isinstance(event, core.MessageAborted):
                    transaction.abort_reply = event.reply
                if not isinstance(event, core.EndOfMessage):
                    transaction.aborted = True
                return

    async def finish(self, *, handler_raised: bool = False) -> None:
        """Run the rest of the session with default answers (the handler is gone).

        If the handler raised, the decision it held gets 451 (421 for a greeting);
        otherwise that decision gets its default. Later envelope steps are accepted and
        later messages tempfailed: with no handler, nobody could take them.
        """
        current = self._current
        if handler_raised and current is not None and not current.decided:
            if isinstance(current, Connect):
                current.tempfail()
            else:
                current.tempfail(_LOCAL_ERROR.text, _LOCAL_ERROR.enhanced)
        while (decision := await self.next_decision()) is not None:
            if isinstance(decision, Message):
                decision.tempfail("Message not handled; try again later", "4.3.0")

    async def close(self, reply: Reply | None = None) -> None:
        """Say a last word (421) if the client can still hear it, then close the stream."""
        if self.closed:
            return
        if reply is not None:
            self._conn.close_with(reply)
        with contextlib.suppress(SessionClosed):
            await self._flush()
        self.closed = True
        with trio.move_on_after(1) as scope:
            with contextlib.suppress(trio.BrokenResourceError, ssl.SSLError):
                await self._stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._stream)

    # ------------------------------------------------------------------ answering

    def _resume(self) -> None:
        """The application handed control back: apply its answer, stop its clock."""
        self._settle()
        if self.app_scope is not None:
            self.app_scope.deadline = math.inf

    def _settle(self) -> None:
        """Apply the application's answer (or the default) to the decision it was given."""
        decision, event = self._current, self._current_core
        if decision is None or event is None:
            return
        self._current = self._current_core = None
        conn = self._conn
        if conn.config.tls_available and not self.offer_starttls:
            conn.config = replace(conn.config, tls_available=False)
        if isinstance(decision, Auth):
            if decision.reply is None or decision.reply.is_positive:
                conn.auth_success(decision.identity)
                self.info.authenticated_as = decision.identity
            else:
                conn.auth_failure(decision.reply)
            return
        if isinstance(decision, Message):
            replies = decision.transaction.final_replies()
            self._transaction = None
            if self.info.lmtp:
                conn.respond_per_recipient(replies)
            else:
                conn.respond(replies[0])
            return
        conn.respond(decision.reply)
        if isinstance(decision, Hello) and conn.hello_name is not None:
            self.info.helo = conn.hello_name
        elif isinstance(decision, Mail) and conn.in_transaction:
            self._transaction = Transaction(
                session=self.info, sender=decision.sender, mail_params=decision.params,
                recipients=[], received=_now())
        elif isinstance(decision, Rcpt) and self._transaction is not None:
            accepted = len(conn.recipients)
            if accepted > len(self._transaction.recipients):
                self._transaction.recipients.append(
                    Recipient(decision.recipient, decision.params))

    def _decision_timeout(self, decision: Decision) -> float:
        timeouts = self.config.timeouts
        return timeouts.message_decision if isinstance(decision, Message) else timeouts.decision

    async def _wrap(self, event: core.Event) -> Decision | None:
        """Turn an engine event into an application decision, or handle it here."""
        if isinstance(event, core.Connect):
            return Connect(self.info)
        if isinstance(event, core.Hello):
            return Hello(event.verb, event.name)
        if isinstance(event, core.Mail):
            return Mail(event.sender, event.params)
        if isinstance(event, core.Rcpt):
            return Rcpt(event.recipient, event.params)
        if isinstance(event, core.DataStart):
            transaction = self._transaction
            assert transaction is not None
            return DataStart(event.method, transaction)
        if isinstance(event, core.EndOfMessage):
            transaction = self._transaction
            assert transaction is not None
            transaction.received = _now()
            if not transaction.streamed:
                transaction.size = event.size
            transaction.session = self.info.snapshot()
            return Message(transaction)
        if isinstance(event, core.AuthStart | core.AuthResponse):
            return await self._auth_step(event)
        if isinstance(event, core.MessageData):
            transaction = self._transaction
            assert transaction is not None
            transaction.chunks.append(event.data)
            return None
        if isinstance(event, core.MessageAborted | core.Reset):
            if self._transaction is not None:
                self._transaction.aborted = True
                if isinstance(event, core.MessageAborted):
                    self._transaction.abort_reply = event.reply
            self._transaction = None
            return None
        if isinstance(event, core.StartTLS):
            await self._start_tls()
            return None
        return None

    async def _auth_step(self, event: core.AuthStart | core.AuthResponse) -> Decision | None:
        conn = self._conn
        if isinstance(event, core.AuthStart):
            self._mechanism = new_mechanism(event.mechanism, hostname=self.config.hostname)
            result = self._mechanism.start(event.initial_response)
        else:
            assert self._mechanism is not None
            result = self._mechanism.step(event.data)
        if isinstance(result, Challenge):
            conn.auth_challenge(result.data)
            return None
        self._mechanism = None
        if isinstance(result, Failed):
            log.info("session %s: malformed AUTH exchange: %s", self.info.id, result.reason)
            conn.auth_failure(Reply(501, "Malformed authentication exchange", "5.5.2"))
            return None
        assert isinstance(result, Verify)
        return await self._verify(result.credentials)

    async def _verify(self, credentials: Credentials) -> Decision | None:
        authenticator = self.config.authenticator
        assert authenticator is not None
        identity: str | None = None
        with trio.move_on_after(self.config.timeouts.decision) as scope:
            try:
                identity = await authenticator(credentials)
            except Exception:
                log.exception("session %s: authenticator failed", self.info.id)
                self._conn.auth_failure(_AUTH_TEMP)
                return None
        if scope.cancelled_caught:
            log.warning("session %s: authenticator timed out", self.info.id)
            self._conn.auth_failure(_AUTH_TEMP)
            return None
        if identity is None:
            log.info("session %s: AUTH %s failed for %r", self.info.id,
                     credentials.mechanism, credentials.username)
            self._conn.auth_failure()
            return None
        return Auth(credentials.mechanism, identity, credentials)

    # ------------------------------------------------------------------ I/O

    async def _next_core_event(self) -> core.Event | None:
        """The engine's next event, reading and writing as needed; None when closed."""
        if self._stashed is not None:
            event, self._stashed = self._stashed, None
            return event
        conn = self._conn
        while True:
            if self.closed:
                return None
            next_event = conn.next_event()
            if next_event is NEED_DATA:
                try:
                    await self._flush()
                    await self._receive()
                except SessionClosed:
                    return None
                continue
            assert isinstance(next_event, core.Event)
            event = next_event
            if isinstance(event, core.ConnectionClosed):
                await self.close()
                return None
            return event

    async def _receive(self) -> None:
        conn = self._conn
        timeouts = self.config.timeouts
        in_body = conn.mode in (Mode.DATA, Mode.BDAT)
        self.busy = in_body or conn.in_transaction
        now = trio.current_time()
        if in_body:
            deadline = now + timeouts.data_block  # each read of the body (RFC 5321 4.5.3.2)
        else:
            # The command timeout runs from the start of a command line, not from the last
            # byte: a client trickling a byte at a time (slowloris) is still cut off.
            if not conn.partial_line or self._line_deadline is None:
                self._line_deadline = now + timeouts.command
            deadline = self._line_deadline
        data: bytes | bytearray | None = None
        # One scope serves both ends of an idle wait: its deadline is the timeout, and a
        # graceful shutdown cancels it (only while idle: a transaction may finish).
        with trio.CancelScope(deadline=deadline) as scope:
            if not self.busy:
                self.idle_scope = scope
                if self.closing_reply is not None:
                    scope.cancel()
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                log.info("session %s: connection lost: %r", self.info.id, exc)
                data = b""
        self.idle_scope = None
        if data is None:
            shutting_down = self.closing_reply is not None and not self.busy
            reason = self.closing_reply if shutting_down else _TIMEOUT
            if reason is _TIMEOUT:
                log.info("session %s: timed out in %s", self.info.id, conn.mode.value)
            await self.close(reason)
            raise SessionClosed
        conn.receive_data(data)

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if not data:
            return
        if self.reply_delay > 0 and not self._conn.closed:
            await trio.sleep(self.reply_delay)
        with trio.move_on_after(self.config.timeouts.write) as scope:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                log.info("session %s: send failed: %r", self.info.id, exc)
                self.closed = True
                raise SessionClosed from None
        if scope.cancelled_caught:
            log.info("session %s: client stopped reading", self.info.id)
            self.closed = True
            raise SessionClosed

    async def _start_tls(self) -> None:
        await self._flush()
        context = self.config.tls
        assert context is not None
        tls_stream = trio.SSLStream(self._stream, context, server_side=True)
        if not await handshake(tls_stream, self.config.timeouts.tls_handshake, self.info.id):
            self.tls_failed = True
            self.closed = True
            await trio.aclose_forcefully(self._stream)
            raise SessionClosed
        self._stream = tls_stream
        self.info.tls = tls_info(tls_stream)
        self.info.helo = None
        self._conn.tls_established()


async def handshake(stream: trio.SSLStream[trio.abc.Stream], timeout: float,
                    session_id: str) -> bool:
    """Do a server-side TLS handshake; a failure is logged and reported as False."""
    with trio.move_on_after(timeout):
        try:
            await stream.do_handshake()
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
            log.info("session %s: TLS handshake failed: %r", session_id, exc)
            return False
    log.info("session %s: TLS handshake timed out", session_id)
    return False


def tls_info(stream: trio.SSLStream[trio.abc.Stream]) -> TLSInfo:
    cipher = stream.cipher()
    cert = stream.getpeercert()
    # trio keeps its SSLObject private; record_server_names() marked it during the
    # handshake, so read it defensively (None if trio ever renames it).
    ssl_object = getattr(stream, "_ssl_object", None)
    server_name = getattr(ssl_object, SNI_ATTRIBUTE, None)
    return TLSInfo(version=stream.version(), cipher=cipher[0] if cipher else None,
                   peer_certificate=dict(cert) if cert else None,
                   server_name=server_name if isinstance(server_name, str) else None)


SNI_ATTRIBUTE = "trio_smtpd_server_name"


def record_server_names(context: ssl.SSLContext) -> None:
    """Make ``context`` note each client's SNI name, keeping any callback it had."""
    previous = context.sni_callback
    if getattr(previous, SNI_ATTRIBUTE, False):
        return  # already wrapped (the context serves more than one server)

    def callback(ssl_object: ssl.SSLObject, server_name: str,
                 ssl_context: ssl.SSLContext) -> int | None:
        # (typeshed says str; a client that sends no SNI gives None, recorded as such)
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        return previous(ssl_object, server_name, ssl_context) if previous else None

    setattr(callback, SNI_ATTRIBUTE, True)
    context.sni_callback = callback


def _now() -> datetime:
    return datetime.now(UTC)
