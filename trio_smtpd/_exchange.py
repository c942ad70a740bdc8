"""The conversation with one client: the protocol engine fed from the client's transport.

``Exchange.next_event()`` returns the engine's next event, doing the I/O in between: it
sends the replies the engine has made (after the tarpit delay, if any), then reads with
the deadline that fits what the client owes us: a command line (RFC 5321 4.5.3.2.7), a
record of message data (a line of DATA, or 1000 octets: 4.5.3.2.5's "data block"), the
rest of the session's time cap. Each deadline runs from the record's first byte, so a
client trickling bytes cannot stretch it. A client that misses a deadline is told
421 and the connection is closed; so is every session at shutdown, at the right moment:
an idle client at once, a client in a transaction at its next command after the
transaction, so that no reply ever arrives unprompted behind a 250.
"""

from __future__ import annotations

import logging
import math
import ssl

import trio

from . import _events as core
from ._appdeadline import AppDeadline
from ._connection import NEED_DATA, PAUSED, Mode, ServerConnection
from ._info import SessionInfo, TLSInfo
from ._metrics import Metrics
from ._replies import Reply
from ._settings import Timeouts
from ._tls import handshake, tls_info
from ._tlsfailure import TLSFailure
from ._transport import EOF, TIMEOUT, WOKEN, Outcome, StreamTransport, Transport, TransportError

__all__ = ["Exchange", "ExchangeTimeouts"]

log = logging.getLogger("trio_smtpd")

# What one read may take: what a connection's buffer once held stays allocated while it
# lives, so with many connections in DATA at once this is the bound that counts.
_RECEIVE_SIZE = 65536
# A record (what must arrive within one deadline) ends at a line end, or after this many
# octets: a long line, or a BDAT chunk (which has no lines), gets a deadline per part.
_RECORD = 1000
# The modes compared on every read, bound to module names: each use of an enum member
# is an attribute lookup, on a path that every read of every session takes.
_DATA, _BDAT = Mode.DATA, Mode.BDAT
# At shutdown, how long a client that just finished its transaction gets for its next
# command (QUIT, usually) before it is told 421 unprompted.
_LAST_COMMAND = 10.0
_TIMEOUT = Reply(421, "Timeout, closing connection", "4.4.2")
_CLOSED = core.ConnectionClosed
_SESSION_TOO_LONG = Reply(421, "Session too long, closing connection", "4.4.2")
# How a session ended (``Exchange.ending``, for Metrics.session_closed), from the
# engine's reason for closing.
_ENDINGS = {"QUIT": "quit", "EOF": "disconnected", "ERRORS": "too_many_errors",
            "AUTH_FAILURES": "auth_failures", "REFUSED": "refused", "CLOSING": "refused"}


class ExchangeTimeouts:
    """The client's deadlines, in seconds (see ``Timeouts``)."""

    __slots__ = ("command", "data_block", "tls_handshake", "write")

    def __init__(self, command: float, data_block: float, write: float,
                 tls_handshake: float) -> None:
        self.command = command
        self.data_block = data_block
        self.write = write
        self.tls_handshake = tls_handshake

    @classmethod
    def of(cls, timeouts: Timeouts) -> ExchangeTimeouts:
        return cls(timeouts.command, timeouts.data_block, timeouts.write,
                   timeouts.tls_handshake)


class Exchange:
    """The protocol engine and the client's transport, for one connection."""

    __slots__ = ("_app", "_clock", "_closing", "_log_id", "_record_deadline", "_record_mode",
                 "_record_octets", "_session_end", "_waiting", "closed", "conn", "ending",
                 "reply_delay", "timeouts", "transaction_answered", "transport")

    def __init__(self, conn: ServerConnection, transport: Transport,
                 timeouts: ExchangeTimeouts, session_end: float, log_id: str,
                 app_deadline: AppDeadline) -> None:
        self.conn = conn
        self._app = app_deadline
        # The run's clock, read before every read: trio.current_time() would look it up
        # through three calls each time.
        self._clock = trio.lowlevel.current_clock()
        self.transport = transport
        #: The client's deadlines.
        self.timeouts = timeouts
        self._session_end = session_end
        self._log_id = log_id
        #: The tarpit: seconds to wait before each batch of replies.
        self.reply_delay = 0.0
        self.closed = False
        # The record the client is sending (a command line, or a line or 1000 octets of
        # message data): the mode it began in (None once it is complete), its deadline,
        # and in message data the octets of it received so far.
        self._record_mode: Mode | None = None
        self._record_deadline = math.inf
        self._record_octets = 0
        self._closing: Reply | None = None  # set at shutdown
        self._waiting = False  # in receive(), waiting on the client
        #: Set when a transaction's final reply goes out; until the client says more, a
        #: shutdown answers its next command rather than interrupting it.
        self.transaction_answered = False
        #: How the session ended (see ``Metrics.session_closed``); "" until it has.
        self.ending = ""

    async def next_event(self) -> core.Event | None:
        """The engine's next event; None once the connection is closed."""
        # (Inline, not in helpers: a suspended call fewer per session; benchmarks/README.md)
        conn = self.conn
        while not self.closed:
            event = conn.next_event()
            if event is not NEED_DATA and event is not PAUSED:
                if type(event) is not _CLOSED:
                    return event  # type: ignore[return-value]
                await self._end(event)
                return None
            # After a reply the client has to read it before it says more, unless it
            # pipelines (then its next line has begun, or will come at once anyway).
            if self.reply_delay > 0:
                replied = conn.has_data_to_send
                expect_wait = replied and not conn.partial_line
                if replied and not await self._tarpit():
                    continue
            else:
                replies = conn.data_to_send()
                expect_wait = bool(replies) and not conn.partial_line
                if replies and (rest := self.transport.send_nowait(replies)) and \
                        not await self._flush(rest):
                    continue
            if event is PAUSED:  # (no reading until the engine's replies are taken)
                await trio.lowlevel.checkpoint()  # let the other sessions run meanwhile
                continue
            deadline = self._read_deadline()  # (from the reply, once sent)
            if deadline is None:
                result: bytes | Outcome = TIMEOUT
            else:
                self._waiting = True
                try:
                    result = await self.transport.receive(_RECEIVE_SIZE, deadline, expect_wait)
                except TransportError as exc:
                    log.info("session %s: connection lost: %r", self._log_id, exc.__cause__)
                    result = EOF
                finally:
                    self._waiting = False
            if result is TIMEOUT or result is WOKEN:
                await self.close(self._why_closing(result is WOKEN))
                continue
            self.transaction_answered = False
            if result is EOF:
                conn.receive_data(b"")
            else:
                self._count(result)  # type: ignore[arg-type]
                conn.receive_data(result)  # type: ignore[arg-type]
        return None

    def _count(self, data: bytes) -> None:
        """Note whether ``data`` completes the record under way (the next read then
        starts a new one, with a new deadline)."""
        octets = self._record_octets + len(data)
        if octets >= _RECORD or (b"\n" in data and self._record_mode is not _BDAT):
            self._record_mode = None
        else:
            self._record_octets = octets

    def close_when_idle(self, reply: Reply) -> None:
        """Shutdown: end the session with ``reply`` now if the client is idle, else
        answer its first command after the current transaction with it."""
        self._closing = reply
        conn = self.conn
        idle = not (conn.reading_body or conn.in_transaction or conn.partial_line
                    or self.transaction_answered)
        if self._waiting and idle:
            self.transport.wake()

    def cut_off(self, reply: Reply) -> None:
        """End the session with ``reply`` at its next wait on the client (or now)."""
        self._closing = reply
        self._session_end = -math.inf
        self.transport.wake()

    async def close(self, reply: Reply | None = None) -> None:
        """Say a last word (421) if the client can still hear it, then close."""
        if self.closed:
            return
        self.closed = True
        if reply is not None:
            self.ending = ("timeout" if reply is _TIMEOUT or reply is _SESSION_TOO_LONG
                           else "shutdown" if reply is self._closing else "error")
            self.conn.close_with(reply)
        try:
            data = self.conn.data_to_send()
            if data:
                # A client that does not read gets no more than a moment.
                deadline = trio.current_time() + 1
                self._app.wait_until(deadline)
                await self.transport.send(data, deadline)
        except TransportError:
            pass
        finally:
            await self.transport.aclose()

    async def start_tls(self, context: ssl.SSLContext, info: SessionInfo,
                        metrics: Metrics | None = None) -> TLSInfo | TLSFailure:
        """After STARTTLS: send the 220, do the handshake; why not (and closed) if it
        failed."""
        sent = (await self._tarpit() if self.reply_delay > 0
                else await self._flush(self.conn.data_to_send()))
        if not sent:
            return TLSFailure("client gone", "the client stopped reading before TLS")
        stream = trio.SSLStream(self.transport.stream(), context, server_side=True)
        self._app.lift()  # (the handshake is a wait on the client)
        failure = await handshake(stream, self.timeouts.tls_handshake, info, metrics)
        if failure is not None:
            self.closed, self.ending = True, "tls_failed"
            await trio.aclose_forcefully(stream)
            return failure
        self.transport = StreamTransport(stream)
        self.conn.tls_established()
        return tls_info(stream)

    async def _tarpit(self) -> bool:
        """Wait ``reply_delay``, then send the engine's replies; False (and closed) if
        that failed."""
        # The delay is the server's choice, not the application's time to decide, so
        # the application's deadline is lifted for it. The replies stay with the engine
        # until the delay is over: a cancellation during it loses none of them.
        self._app.lift()
        await trio.sleep(self.reply_delay)
        return await self._flush(self.conn.data_to_send())

    async def _flush(self, data: bytes | memoryview) -> bool:
        """Send ``data`` (replies); False (and closed) if that failed."""
        if not data:
            return True
        deadline = min(trio.current_time() + self.timeouts.write, self._session_end)
        self._app.wait_until(deadline)
        try:
            sent = await self.transport.send(data, deadline)
        except TransportError as exc:
            log.info("session %s: send failed: %r", self._log_id, exc.__cause__)
            sent = False
        else:
            if not sent:
                log.info("session %s: client stopped reading", self._log_id)
        if not sent:
            self.closed, self.ending = True, "send_failed"
            await self.transport.aclose()
        return sent

    def _read_deadline(self) -> float | None:
        """The deadline of the next read (None if it has passed already), clear of the
        application's (and at shutdown, no more new commands)."""
        conn, timeouts, now = self.conn, self.timeouts, self._clock.current_time()
        if self._closing is not None and not (conn.reading_body or conn.in_transaction
                                              or conn.partial_line):
            conn.close_on_next_command(self._closing)
        mode = conn.mode
        if mode is not self._record_mode:  # this read begins a record
            self._record_mode = mode
            self._record_octets = 0
            if mode is _DATA or mode is _BDAT:
                limit = timeouts.data_block
            elif self._closing is not None:
                limit = min(timeouts.command, _LAST_COMMAND)
            else:
                limit = timeouts.command
            self._record_deadline = now + limit
        deadline = self._record_deadline
        if deadline > self._session_end:
            deadline = self._session_end
        if deadline <= now:
            return None
        self._app.wait_until(deadline)
        return deadline

    async def _end(self, event: core.ConnectionClosed) -> None:
        """The engine has closed the connection: note why, and close it."""
        reason = _ENDINGS.get(event.reason, "error")
        self.ending = "shutdown" if self._closing is not None and reason == "refused" else reason
        if self.reply_delay > 0 and self.conn.has_data_to_send:
            await self._tarpit()  # (the last reply too: a tarpit holds back every one)
        await self.close()

    def _why_closing(self, woken: bool) -> Reply:
        closing = self._closing
        # At shutdown, a client waited on for a command is not too slow: it is being
        # let go (its wait was cut to _LAST_COMMAND because of the shutdown).
        if closing is not None and (woken or self._session_end == -math.inf
                                    or not self.conn.reading_body):
            return closing
        if trio.current_time() >= self._session_end:
            return _SESSION_TOO_LONG
        log.info("session %s: timed out in %s", self._log_id, self.conn.mode.value)
        return _TIMEOUT
