"""One client connection: pumps bytes between a transport and the protocol engine, and
hands the engine's decisions to the application as an async iterator.

The session runs in the connection's own task and iterating it drives the protocol: each
``__anext__`` first applies the application's answer to the previous decision, then reads
and writes until the engine has a new decision to ask about. No extra task, no channel:
an idle connection costs one task, its buffers and a short chain of suspended calls.

Every wait has a deadline (``Session.deadline``) that the server's watchdog enforces: a
wait on the client is woken and answered 421, a decision the application sits on gets
its application scope cancelled and then its default.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import trio

from . import _events as core
from ._connection import NEED_DATA, ServerConnection
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
from ._transport import PARK, StreamTransport, Transport, TransportError

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Session"]

log = logging.getLogger("trio_smtpd")

# What one read may take. Larger reads would save about 8% of a 10 MB message's CPU, but
# what a connection's buffer once held stays allocated while it lives: with many
# connections in DATA at once, this is the bound that counts.
_RECEIVE_SIZE = 65536
_TIMEOUT = Reply(421, "Timeout, closing connection", "4.4.2")
_SESSION_TOO_LONG = Reply(421, "Session too long, closing connection", "4.4.2")
_LOCAL_ERROR = Reply(451, "Local error in processing", "4.3.0")
_AUTH_TEMP = Reply(454, "Temporary authentication failure", "4.7.0")

Authenticator = Callable[[Credentials], Awaitable[str | None]]


class Session:
    """A client session; ``async for event in session`` yields its decisions in order."""

    __slots__ = (
        "_broken",
        "_conn",
        "_current",
        "_current_core",
        "_line_deadline",
        "_mechanism",
        "_on_client",
        "_session_end",
        "_stashed",
        "_transaction",
        "_transport",
        "app_scope",
        "busy",
        "closed",
        "closing_reply",
        "config",
        "deadline",
        "info",
        "offer_starttls",
        "reply_delay",
        "server",
        "tls_failed",
    )

    def __init__(self, server: Server, transport: Transport, info: SessionInfo) -> None:
        self.server = server
        self.config = server.config
        self.info = info
        self._transport = transport
        self._conn = ServerConnection(server.protocol_config, tls_active=info.tls is not None)
        self._current: Decision | None = None
        self._current_core: core.Decision | None = None
        self._transaction: Transaction | None = None
        self._stashed: core.Event | None = None
        self._mechanism: Mechanism | None = None
        self._line_deadline: float | None = None
        cap = self.config.timeouts.session
        self._session_end = math.inf if cap is None else trio.current_time() + cap
        #: When the current wait (on the client or on the application) must end; the
        #: server's watchdog calls ``expire()`` then.
        self.deadline = math.inf
        self._set_deadline(self._session_end)
        self._on_client = False  # waiting on the client (else the application has control)
        self._broken = False  # sending failed: nothing more can be said to the client
        #: Set by the server: the application's cancel scope, cancelled when the
        #: application sits on a decision past its deadline.
        self.app_scope: trio.CancelScope | None = None
        #: Set by the server to end the session at its next idle moment (shutdown).
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

    def __anext__(self) -> Awaitable[Decision]:
        # The coroutine itself, not one awaiting it: each suspended call in the chain of
        # an idle connection costs memory.
        return self._next_event(deciding=True)

    async def next_decision(self) -> Decision | None:
        """The next decision to make, or None once the session is over."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None

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
            event = await self._next_event(deciding=False)
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
        later messages tempfailed: with no handler, nobody could take them. A session
        past its time cap is closed with 421 instead.
        """
        if trio.current_time() >= self._session_end:
            await self.close(_SESSION_TOO_LONG)
            return
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
        """Say a last word (421) if the client can still hear it, then close the connection."""
        if self.closed:
            return
        self.closed = True
        self._current = self._current_core = None
        if reply is not None:
            self._conn.close_with(reply)
        try:
            await self._send_pending()
        finally:
            self.deadline = math.inf
            await self._transport.aclose()

    def receive_early(self, data: bytes) -> None:
        """Bytes the client sent before the session began (read past a PROXY header)."""
        self._conn.receive_data(data)

    def expire(self, now: float) -> None:
        """Called by the server's watchdog once ``deadline`` has passed."""
        # What is left to watch is the session's time cap.
        self.deadline = self._session_end if now < self._session_end else math.inf
        if self._on_client:
            self._transport.wake()
        elif self.app_scope is not None:
            self.app_scope.cancel()
        # Else the server's own handler holds control, for a bounded time: the session's
        # time cap is then enforced at its next wait on the client.

    def idle_check(self) -> None:
        """From the server's idle pool: move a long wait on the client there."""
        self._transport.idle_check()

    def shut_down(self, reply: Reply) -> None:
        """Graceful shutdown: end the session now if it is idle, else once it is."""
        self.closing_reply = reply
        if self._on_client and not self.busy:
            self._transport.wake()

    # ------------------------------------------------------------------ answering

    def _resume(self) -> None:
        """The application handed control back: apply its answer, stop its clock."""
        self._settle()
        self.deadline = self._session_end

    def _settle(self) -> None:
        """Apply the application's answer (or the default) to the decision it was given."""
        decision, event = self._current, self._current_core
        if decision is None or event is None:
            return
        self._current = self._current_core = None
        conn = self._conn
        if conn.config.tls_available and not self.offer_starttls:
            conn.config = replace(conn.config, tls_available=False)
        kind = type(decision)
        if kind is Auth:
            decision = cast(Auth, decision)
            if decision.reply is None or decision.reply.is_positive:
                conn.auth_success(decision.identity)
                self.info.authenticated_as = decision.identity
            else:
                conn.auth_failure(decision.reply)
            return
        if kind is Message:
            decision = cast(Message, decision)
            replies = decision.transaction.final_replies()
            self._transaction = None
            if self.info.lmtp:
                conn.respond_per_recipient(replies)
            else:
                conn.respond(replies[0])
            return
        conn.respond(decision.reply)
        if kind is Mail:
            decision = cast(Mail, decision)
            if conn.in_transaction:
                self._transaction = Transaction(
                    session=self.info, sender=decision.sender, mail_params=decision.params,
                    recipients=[], received=_now())
        elif kind is Rcpt:
            decision = cast(Rcpt, decision)
            if (self._transaction is not None
                    and conn.recipient_count > len(self._transaction.recipients)):
                self._transaction.recipients.append(
                    Recipient(decision.recipient, decision.params))
        elif kind is Hello and conn.hello_name is not None:
            self.info.helo = conn.hello_name

    # Engine events to decisions, dispatched on the event's type (see _WRAP below).

    def _message_data(self, event: core.MessageData) -> None:
        transaction = self._transaction
        assert transaction is not None
        transaction.chunks.append(event.data)

    def _mail(self, event: core.Mail) -> Decision:
        return Mail(event.sender, event.params)

    def _rcpt(self, event: core.Rcpt) -> Decision:
        return Rcpt(event.recipient, event.params)

    def _data_start(self, event: core.DataStart) -> Decision:
        transaction = self._transaction
        assert transaction is not None
        return DataStart(event.method, transaction)

    def _end_of_message(self, event: core.EndOfMessage) -> Decision:
        transaction = self._transaction
        assert transaction is not None
        transaction.received = _now()
        if not transaction.streamed:
            transaction.size = event.size
        transaction.session = self.info.snapshot()
        return Message(transaction)

    def _hello(self, event: core.Hello) -> Decision:
        return Hello(event.verb, event.name)

    def _connect(self, event: core.Connect) -> Decision:
        return Connect(self.info)

    def _wrap_other(self, event: core.Event) -> None:
        if isinstance(event, core.MessageAborted | core.Reset):
            if self._transaction is not None:
                self._transaction.aborted = True
                if isinstance(event, core.MessageAborted):
                    self._transaction.abort_reply = event.reply
            self._transaction = None

    async def _wrap_slow(self, event: core.AuthStart | core.AuthResponse | core.StartTLS
                         ) -> Decision | None:
        if isinstance(event, core.StartTLS):
            await self._start_tls()
            return None
        return await self._auth_step(event)

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

    def _set_deadline(self, deadline: float) -> None:
        if deadline > self._session_end:
            deadline = self._session_end
        self.deadline = deadline
        watchdog = self.server.watchdog
        if deadline < watchdog.next_check:
            watchdog.expect(deadline)

    async def _next_event(self, *, deciding: bool) -> Any:
        """Read and write until there is something for the application.

        ``deciding``: the next decision (``StopAsyncIteration`` once the session is over),
        handling every other event here; else the engine's next event (None once over),
        for ``body()``.
        """
        if deciding:
            self._resume()
        conn = self._conn
        while True:
            if self._stashed is not None:
                event: core.Event | None = self._stashed
                self._stashed = None
            elif self.closed:
                event = None
            else:
                next_event = conn.next_event()
                if next_event is NEED_DATA:
                    # Send the replies, then read. (Written out here, not in a helper
                    # coroutine, to keep an idle connection's chain of calls short.)
                    replied = conn.has_data_to_send
                    if replied:
                        rest = self._try_send()  # replies are small: they usually all go
                        if rest:
                            await self._send_rest(rest)
                        if self._broken:
                            await self.close()
                            continue
                    # After a reply the client has to read it before it says more, unless
                    # it pipelines: trying to read at once would mostly be a wasted call.
                    wait_first = replied and not conn.partial_line
                    self._await_client()
                    try:
                        data = await self._transport.receive(_RECEIVE_SIZE,
                                                             wait_first=wait_first)
                        while data is PARK:  # idle a while: wait in the server's idle pool
                            await self._transport.park()
                            data = await self._transport.receive(_RECEIVE_SIZE)
                    except TransportError as exc:
                        log.info("session %s: connection lost: %r", self.info.id,
                                 exc.__cause__)
                        data = b""
                    finally:
                        self._on_client = False
                        self.deadline = self._session_end
                    if data is None:  # woken: a timeout or a shutdown
                        await self.close(self._wake_reason())
                    else:
                        conn.receive_data(data)
                    continue
                event = next_event  # type: ignore[assignment]
                if type(event) is core.ConnectionClosed:
                    await self.close()
                    event = None
            if not deciding:
                return event
            if event is None:
                raise StopAsyncIteration
            wrap = _WRAP.get(type(event))
            if wrap is not None:
                decision = wrap(self, event)
            elif isinstance(event, core.AuthStart | core.AuthResponse | core.StartTLS):
                try:
                    decision = await self._wrap_slow(event)
                except TransportError:  # STARTTLS ended the session
                    raise StopAsyncIteration from None
            else:
                self._wrap_other(event)
                continue
            if decision is not None:
                self._current, self._current_core = decision, event  # type: ignore[assignment]
                timeouts = self.config.timeouts
                self._set_deadline(trio.current_time() + (
                    timeouts.message_decision if type(decision) is Message
                    else timeouts.decision))
                return decision

    def _await_client(self) -> None:
        """About to wait on the client: set the deadline."""
        # The command timeout runs from the start of a command line, not from its last
        # byte: a client trickling a byte at a time (slowloris) is still cut off. Message
        # data gets its own timeout per read (RFC 5321 4.5.3.2). A busy session (one in a
        # transaction) may finish at shutdown; an idle one is ended at once.
        conn = self._conn
        now = trio.current_time()
        in_body = conn.reading_body
        busy = self.busy = in_body or conn.in_transaction
        timeouts = self.config.timeouts
        if in_body:
            self._set_deadline(now + timeouts.data_block)
        else:
            if not conn.partial_line or self._line_deadline is None:
                self._line_deadline = now + timeouts.command
            self._set_deadline(self._line_deadline)
        if self.closing_reply is not None and not busy:
            self._transport.wake()
        self._on_client = True

    def _wake_reason(self) -> Reply:
        if self.closing_reply is not None and not self.busy:
            return self.closing_reply
        if trio.current_time() >= self._session_end:
            return _SESSION_TOO_LONG
        log.info("session %s: timed out in %s", self.info.id, self._conn.mode.value)
        return _TIMEOUT

    async def _send_pending(self) -> bool:
        """Send every reply the engine has produced; False if the client cannot take them."""
        rest = self._try_send()
        if rest:
            await self._send_rest(rest)
        return not self._broken

    def _try_send(self) -> bytes | memoryview:
        """Send the engine's replies as far as that needs no wait; return the rest."""
        data = self._conn.data_to_send()
        if self._broken:
            return b""
        if self.reply_delay > 0 and not self._conn.closed:
            return data  # the tarpit: _send_rest() waits first
        try:
            return self._transport.send_nowait(data)
        except TransportError as exc:
            log.info("session %s: send failed: %r", self.info.id, exc.__cause__)
            self._broken = True
            return b""

    async def _send_rest(self, data: bytes | memoryview) -> None:
        if self.reply_delay > 0 and not self._conn.closed:
            await trio.sleep(self.reply_delay)
        self._set_deadline(trio.current_time() + self.config.timeouts.write)
        self._on_client = True
        try:
            sent = await self._transport.send(data)
        except TransportError as exc:
            log.info("session %s: send failed: %r", self.info.id, exc.__cause__)
            sent = False
        else:
            if not sent and not self.closed:
                log.info("session %s: client stopped reading", self.info.id)
        finally:
            self._on_client = False
            self.deadline = self._session_end
        self._broken = not sent

    async def _start_tls(self) -> None:
        if not await self._send_pending():
            raise TransportError("the client went away before TLS")
        context = self.config.tls
        assert context is not None
        tls_stream = trio.SSLStream(self._transport.stream(), context, server_side=True)
        if not await handshake(tls_stream, self.config.timeouts.tls_handshake, self.info.id):
            self.tls_failed = True
            self.closed = True
            await trio.aclose_forcefully(tls_stream)
            raise TransportError("TLS handshake failed")
        self._transport = StreamTransport(tls_stream)
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


_WRAP: dict[type[core.Event], Callable[[Session, Any], Decision | None]] = {
    core.MessageData: Session._message_data,
    core.Mail: Session._mail,
    core.Rcpt: Session._rcpt,
    core.DataStart: Session._data_start,
    core.EndOfMessage: Session._end_of_message,
    core.Hello: Session._hello,
    core.Connect: Session._connect,
}
