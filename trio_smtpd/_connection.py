"""The sans-I/O SMTP/LMTP server state machine.

Theory of operation (in the manner of h11): the caller feeds received bytes in with
``receive_data()`` and pulls ``next_event()`` until it returns ``NEED_DATA``; every event
that is a ``Request`` must be answered (``respond()``, or the AUTH calls) before the next
one is pulled. Replies accumulate in an output buffer that the caller drains with
``data_to_send()``; draining only when ``next_event()`` says ``NEED_DATA`` flushes the
replies of a pipelined group together (RFC 2920 3.2). ``PAUSED`` instead says that
``UNSENT_REPLY_LIMIT`` octets of replies are waiting: send them, then pull again without
reading (the engine takes no more commands meanwhile, however many it holds).

Everything that affects protocol state lives here: sequencing (RFC 5321 4.1.4), limits,
STARTTLS and AUTH state changes, DATA/BDAT framing, LMTP's per-recipient replies. The
engine answers protocol errors itself; only decisions reach the caller. It never does I/O
and never reads a clock, so it can be driven by tests transcript by transcript.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import re
from collections.abc import Callable, Sequence
from typing import Any

from ._address import Address, parse_forward_path, parse_reverse_path
from ._commands import parse_bdat, path_argument, split_command
from ._config import ProtocolConfig
from ._events import (
    AuthResponse,
    AuthStart,
    BodyStart,
    ConnectionClosed,
    ConnectionOpened,
    EndOfMessage,
    Event,
    HelloCommand,
    MailCommand,
    MessageAborted,
    MessageData,
    RcptCommand,
    Recipient,
    Request,
    Reset,
    StartTLS,
    XclientCommand,
)
from ._framing import REPLY_TOO_BIG, ChunkReader, DotReader
from ._observer import Observer, Summary
from ._params import EnabledExtensions, MailParams, parse_mail_params, parse_rcpt_params
from ._replies import Reply, ReplyError
from ._xclient import ATTRIBUTES, parse_xclient

__all__ = ["NEED_DATA", "PAUSED", "UNSENT_REPLY_LIMIT", "NeedData", "Paused",
           "ServerConnection", "UsageError", "greeting"]


class NeedData:
    """Sentinel type: the engine needs more bytes before it can say anything new."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


class Paused:
    """Sentinel type: the engine takes no more commands until its replies are taken."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PAUSED"


PAUSED = Paused()

#: Octets of unsent replies past which the engine stops taking commands (``PAUSED``): a
#: client that pipelines commands and never reads the answers would otherwise have one
#: read's worth of commands turned into many times as much in replies. RFC 2920 3.1
#: lets a server stop reading; the client then blocks on its own sends.
UNSENT_REPLY_LIMIT = 65536


class UsageError(RuntimeError):
    """The caller drove the engine wrongly (e.g. pulled an event with a decision pending)."""


class Mode(enum.Enum):
    """What the bytes in the receive buffer are."""

    GREETING = "greeting"  # nothing is read until the Connect decision is answered
    COMMAND = "command"  # command lines
    AUTH = "auth"  # a SASL response line
    DATA = "data"  # a dot-terminated message body
    BDAT = "bdat"  # the octets of a BDAT chunk
    TLS_HANDSHAKE = "tls"  # the caller is doing the TLS handshake; no bytes for us
    CLOSED = "closed"


# Replies the engine itself gives; application replies come through respond().
_OK = Reply(250, "OK", "2.0.0")
_NO_HELLO = Reply(503, "Send HELO/EHLO first", "5.5.1")
_NO_LHLO = Reply(503, "Send LHLO first", "5.5.1")
_NEED_MAIL = Reply(503, "Need MAIL command first", "5.5.1")
_NEED_RCPT = Reply(554, "No valid recipients", "5.5.1")
_REFUSED_ONLY_QUIT = Reply(503, "No service here; only QUIT is accepted", "5.5.1")
_TOO_MANY_ERRORS = Reply(421, "Too many errors, closing connection", "4.7.0")
_SENDER_OK = Reply(250, "Sender OK", "2.1.0")
_RECIPIENT_OK = Reply(250, "Recipient OK", "2.1.5")
_START_DATA = Reply(354, "End data with <CR><LF>.<CR><LF>")
_ENCRYPTION_REQUIRED = Reply(538, "Encryption required for requested authentication "
                             "mechanism", "5.7.11")
# Postfix's answers to XCLIENT from a client outside smtpd_authorized_xclient_hosts, and
# inside a transaction.
_XCLIENT_REFUSED = Reply(550, "Error: insufficient authorization", "5.7.0")
_XCLIENT_IN_TRANSACTION = Reply(503, "Error: MAIL transaction in progress", "5.5.1")
_MESSAGE_ACCEPTED = Reply(250, "Message accepted", "2.0.0")
# RFC 5321 4.1.1: command arguments are text; control characters have no place there.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CRLF = b"\r\n"

# Codes that count against max_bad_commands (RFC 5321 4.2.2 syntax and sequence errors).
_BAD_COMMAND_CODES = frozenset({500, 501, 502, 503, 504, 555})


class ServerConnection:
    """One SMTP or LMTP server session, without I/O."""

    # Slots: a server holds one of these per connection, thousands of them when idle.
    __slots__ = (
        "_auth_failures",
        "_bad_commands",
        "_bdat_size",
        "_body_method",
        "_buffer",
        "_chunk",
        "_chunk_last",
        "_chunk_refusal",
        "_chunk_size",
        "_closing_reply",
        "_discarding_line",
        "_dot_reader",
        "_enhanced",
        "_eof",
        "_has_sender",
        "_mail_params",
        "_out",
        "_pending",
        "_queued",
        "_recipients",
        "_refused",
        "_sender",
        "_verb",
        "authenticated_as",
        "config",
        "hello_name",
        "hello_verb",
        "mode",
        "observer",
        "tls_active",
    )

    def __init__(self, config: ProtocolConfig | None = None, *, tls_active: bool = False) -> None:
        self.config = config or ProtocolConfig()
        self.tls_active = tls_active
        self.mode = Mode.GREETING
        #: The name given with the accepted HELO/EHLO/LHLO, or None before one.
        self.hello_name: str | None = None
        self.hello_verb: str | None = None
        #: The identity given to ``auth_success()``, or None.
        self.authenticated_as: str | None = None
        self._refused = False
        self._buffer = bytearray()
        self._out = bytearray()
        self._eof = False
        # Events made but not yet returned: rarely more than two, and usually none, so
        # the list exists only while it holds something (an idle connection then holds
        # no container at all; benchmarks/README.md, "Memory per idle connection").
        self._queued: list[Event] | None = None
        self._pending: Request | None = None
        self._discarding_line = False
        self._bad_commands = 0
        self._auth_failures = 0
        self._enhanced = self.config.enhanced_status_codes
        # Set by close_on_next_command(): graceful shutdown.
        self._closing_reply: Reply | None = None
        #: Hears every line and reply of the session (see ``_observer.py``), if set.
        self.observer: Observer | None = None
        # The command being answered, for the observer: the greeting answers the
        # connection ("CONNECT"); a last word (421 on timeout or shutdown), nothing ("").
        self._verb = "CONNECT"
        # The mail transaction (RFC 5321 3.3); reset by _clear_transaction().
        self._has_sender = False
        self._sender: Address | None = None
        self._mail_params: MailParams | None = None
        # The accepted recipients: a new list for each transaction, so that whoever kept
        # the list of a finished transaction (the server's Transaction) keeps it whole.
        self._recipients: list[Recipient] = []
        self._body_method: str | None = None
        self._bdat_size = 0
        self._chunk_size = 0
        self._dot_reader: DotReader | None = None
        self._chunk: ChunkReader | None = None
        self._chunk_last = False
        self._chunk_refusal: tuple[Reply, bool, bool] | None = None

    # ------------------------------------------------------------------ public state

    @property
    def closed(self) -> bool:
        return self.mode is Mode.CLOSED

    @property
    def pending(self) -> Request | None:
        """The decision waiting for an answer, if any."""
        return self._pending

    @property
    def sender(self) -> Address | None:
        return self._sender

    @property
    def mail_params(self) -> MailParams | None:
        return self._mail_params

    @property
    def recipients(self) -> list[Recipient]:
        """The accepted recipients of the current transaction, in order.

        The list is the engine's own (do not change it); each transaction gets a new one.
        """
        return self._recipients

    @property
    def recipient_count(self) -> int:
        return len(self._recipients)

    @property
    def in_transaction(self) -> bool:
        return self._has_sender

    @property
    def offered_auth_mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms offered to this client now (in cleartext, or under TLS)."""
        config = self.config
        if self.tls_active or not config.auth_requires_tls:
            return config.auth_mechanisms
        return config.cleartext_auth_mechanisms

    # ------------------------------------------------------------------ byte pump

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add received bytes; ``b""`` means the client closed its side."""
        if self.mode is Mode.TLS_HANDSHAKE:
            raise UsageError("bytes received during the TLS handshake belong to the TLS layer")
        if self._eof and data:
            raise UsageError("data received after end of file")
        if not data:
            self._eof = True
        elif self.mode is not Mode.CLOSED:
            self._buffer += data

    def data_to_send(self) -> bytes:
        """Return (and forget) every reply byte produced so far."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    @property
    def has_received(self) -> bool:
        """True once the client has sent anything (a command or part of one)."""
        return self._verb != "CONNECT" or bool(self._buffer)

    @property
    def reading_body(self) -> bool:
        """True while the bytes expected are message data (DATA or a BDAT chunk)."""
        mode = self.mode
        return mode is Mode.DATA or mode is Mode.BDAT

    @property
    def partial_line(self) -> bool:
        """True while part of a line (command or AUTH) has arrived but not its end."""
        return bool(self._buffer) or self._discarding_line

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed (bounded by the line limits)."""
        return len(self._buffer)

    def next_event(self) -> Event | NeedData | Paused:
        if self._pending is not None:
            raise UsageError(f"answer {type(self._pending).__name__} before the next event")
        while True:
            queued = self._queued
            if queued:
                event = queued.pop(0)
                if not queued:
                    self._queued = None
                if isinstance(event, Request):
                    self._pending = event
                return event
            mode = self.mode
            if mode is Mode.GREETING:
                self._pending = ConnectionOpened()
                return self._pending
            if mode is Mode.CLOSED or mode is Mode.TLS_HANDSHAKE:
                return NEED_DATA
            if mode is Mode.DATA:
                produced = self._step_data()
            elif mode is Mode.BDAT:
                produced = self._step_bdat()
            elif len(self._out) >= UNSENT_REPLY_LIMIT:
                # (Replies answer commands, or the chunks commands announce: checking
                # before each command line is enough to bound them.)
                return PAUSED
            else:
                produced = self._step_line()
            if produced is NEED_DATA:
                if self._eof:
                    return self._end_of_file()
                return NEED_DATA
            if produced is not None:
                if self._queued is not None:  # after what the step itself queued
                    self._queue(produced)  # type: ignore[arg-type]
                    continue
                if isinstance(produced, Request):
                    self._pending = produced
                return produced

    # ------------------------------------------------------------------ decisions

    def respond(self, reply: Reply | None = None) -> None:
        """Answer the pending decision; None means its default positive reply."""
        decision = self._pending
        if decision is None:
            raise UsageError("no decision is pending")
        answer = _ANSWERS.get(type(decision))
        if answer is None:
            raise UsageError("answer AUTH with auth_challenge/auth_success/auth_failure")
        if type(decision) is EndOfMessage and self.config.lmtp:
            count = len(self._recipients)
            self.respond_per_recipient([reply] * count if reply else [None] * count)
            return
        if reply is not None and reply.code == 421:
            self._pending = None
            self._last_word(reply)
            return
        self._pending = None
        try:
            answer(self, decision, reply)
        except UsageError:
            self._pending = decision  # a wrong answer leaves the decision open
            raise

    def _answer_message(self, decision: EndOfMessage, reply: Reply | None) -> None:
        self._send(_check(reply, (250,), "message") or _MESSAGE_ACCEPTED)
        self._clear_transaction()

    def respond_per_recipient(self, replies: Sequence[Reply | None]) -> None:
        """LMTP (RFC 2033 4.2): answer EndOfMessage with one reply per accepted recipient."""
        decision = self._pending
        if not isinstance(decision, EndOfMessage):
            raise UsageError("per-recipient replies answer EndOfMessage only")
        if not self.config.lmtp:
            raise UsageError("per-recipient replies are for LMTP sessions")
        if len(replies) != len(self._recipients):
            raise UsageError(
                f"{len(replies)} replies for {len(self._recipients)} accepted recipients"
            )
        for reply in replies:  # all of them before any goes out
            _check(reply, (250,), "message")
        self._pending = None
        for rcpt, reply in zip(self._recipients, replies, strict=True):
            self._send(reply or Reply(250, f"<{rcpt.address}> delivered", "2.1.5"))
        self._clear_transaction()
        if any(reply is not None and reply.code == 421 for reply in replies):
            self._queue(self._close("CLOSING"))  # (421 says the channel closes)

    def auth_challenge(self, challenge: bytes) -> None:
        """Send a 334 challenge; the client's answer comes back as ``AuthResponse``."""
        self._take_auth_decision()
        self._send_raw(b"334 " + base64.b64encode(challenge) + _CRLF)
        self.mode = Mode.AUTH

    def auth_success(self, identity: str) -> None:
        self._take_auth_decision()
        self.authenticated_as = identity
        self.mode = Mode.COMMAND
        self._send(Reply(235, "Authentication successful", "2.7.0"))

    def auth_failure(self, reply: Reply | None = None) -> None:
        if reply is not None and reply.code < 400:
            raise UsageError("an AUTH failure needs a 4xx or 5xx reply")
        self._take_auth_decision()
        self.mode = Mode.COMMAND
        if reply is not None and reply.code == 421:
            self._last_word(reply)
            return
        self._auth_failures += 1
        if self._auth_failures > self.config.max_auth_failures:
            self._last_word(Reply(421, "Too many authentication failures", "4.7.0"),
                            "AUTH_FAILURES")
            return
        self._send(reply or Reply(535, "Authentication credentials invalid", "5.7.8"))

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: start over, as RFC 3207 4.2 says."""
        if self.mode is not Mode.TLS_HANDSHAKE:
            raise UsageError("no STARTTLS handshake is under way")
        self.tls_active = True
        # An identity proved before TLS is knowledge from outside it, which RFC 3207
        # says to discard: the client signs in again through TLS.
        self.hello_name = self.hello_verb = self.authenticated_as = None
        self.mode = Mode.COMMAND

    def close_on_next_command(self, reply: Reply) -> None:
        """Graceful shutdown: answer the client's next command with ``reply`` (421) and
        close, so that no reply arrives unprompted; QUIT still gets its 221."""
        self._closing_reply = reply

    def close_with(self, reply: Reply) -> None:
        """Send a last reply (421 on timeout or shutdown) and close, whatever the state."""
        if self.mode is Mode.CLOSED:
            return
        # Nothing produced but not yet pulled reaches the caller: above all not a message
        # decision whose client is being told 421 (it would send the message again).
        self._queued = None
        self._pending = None
        self._verb = ""
        self._last_word(reply)

    # ------------------------------------------------------------------ reading lines

    def _step_line(self) -> Event | NeedData | None:
        auth = self.mode is Mode.AUTH
        limit = self.config.max_auth_line_length if auth else self._max_command_line
        buf = self._buffer
        if self._discarding_line:
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return NEED_DATA
            del buf[: end + 1]
            self._discarding_line = False
            if auth:
                self.mode = Mode.COMMAND
                self._error(Reply(500, "Authentication exchange line is too long",
                                         "5.5.6"))
                return None
            self._error(Reply(500, "Line too long", "5.5.2"))
            return None
        end = buf.find(b"\n", 0, limit)
        if end < 0:
            if len(buf) >= limit:
                # Bounded memory: forget the line now, answer once its end arrives.
                del buf[:limit]
                self._discarding_line = True
                return None
            return NEED_DATA
        raw = bytes(buf[: end + 1])
        del buf[: end + 1]
        if auth:
            return self._auth_line(raw)
        return self._command_line(raw)

    @property
    def _max_command_line(self) -> int:
        return self.config.max_command_line_length + self.config.command_line_allowance

    def _command_line(self, raw: bytes) -> Event | None:
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        try:
            text: str | None = line.decode("utf-8")
        except UnicodeDecodeError:
            text = self._undecodable(line)
        if text is None:
            return None
        if not text:
            self._verb = ""
            if self.observer is not None:
                self.observer.received("")  # (a line too: the observer hears every one)
            self._error(Reply(500, "Empty command line", "5.5.2"))
            return None
        verb, argument = split_command(text)
        if self.observer is not None:
            self.observer.received(_redacted(verb, text, after=self._verb))
        self._verb = verb
        if self._closing_reply is not None and verb != "QUIT":
            self._last_word(self._closing_reply)
            return None
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._error(Reply(500, "Command unrecognized", "5.5.1"))
            return None
        refusal = None
        if len(raw) > self.config.max_command_line_length and verb not in ("MAIL", "RCPT"):
            refusal = Reply(500, "Line too long", "5.5.2")
        elif _CONTROL.search(argument):
            refusal = Reply(501, "Control character in command arguments", "5.5.2")
        elif self._refused and verb != "QUIT":
            refusal = _REFUSED_ONLY_QUIT
        if refusal is not None:
            if verb == "BDAT":
                self._refuse_bdat(argument, refusal)
            else:
                self._error(refusal)
            return None
        try:
            return handler(self, argument)
        except ReplyError as exc:
            self._error(exc.reply)
            return None

    def _undecodable(self, line: bytes) -> str | None:
        """A line that is not UTF-8: None (answered 500), except a HELO when
        ``accept_8bit_helo`` says to take it with the bytes escaped."""
        verb = line[:5].upper()
        if self.config.accept_8bit_helo and verb in (b"HELO ", b"EHLO ", b"LHLO "):
            return line.decode("utf-8", "backslashreplace")
        self._verb = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        if self.observer is not None:
            self.observer.received(line.decode("utf-8", "backslashreplace"))
        self._error(Reply(500, "Command line is not valid UTF-8", "5.5.2"))
        return None

    # ------------------------------------------------------------------ commands

    def _cmd_helo(self, argument: str) -> Event | None:
        return self._hello("HELO", argument)

    def _cmd_ehlo(self, argument: str) -> Event | None:
        return self._hello("EHLO", argument)

    def _cmd_lhlo(self, argument: str) -> Event | None:
        return self._hello("LHLO", argument)

    def _hello(self, verb: str, argument: str) -> Event | None:
        if self.config.lmtp != (verb == "LHLO"):
            self._error(Reply(500, "Use LHLO in LMTP" if self.config.lmtp
                                     else "Command unrecognized", "5.5.1"))
            return None
        if not argument:
            self._error(Reply(501, f"Syntax: {verb} <hostname>", "5.5.4"))
            return None
        events = self._reset("HELLO")
        if events is not None:
            self._queue(events)
        return HelloCommand(verb, argument)  # type: ignore[arg-type]

    def _cmd_mail(self, argument: str) -> Event | None:
        self._require_hello()
        if self._has_sender:
            raise ReplyError(Reply(503, "Sender already specified", "5.5.1"))
        if self.config.require_tls and not self.tls_active:
            raise ReplyError(Reply(530, "Must issue a STARTTLS command first", "5.7.0"))
        if self.config.require_auth and self.authenticated_as is None:
            raise ReplyError(Reply(530, "Authentication required", "5.7.0"))
        path = path_argument(argument, "FROM:", "5.5.4")
        sender, rest = parse_reverse_path(path, utf8=self.config.smtputf8)
        self._check_no_params_after_helo(rest)
        params = parse_mail_params(rest, self._extensions())
        if sender is not None and not sender.is_ascii and not params.smtputf8:
            raise ReplyError(Reply(553, "Non-ASCII sender address requires SMTPUTF8", "5.6.7"))
        return MailCommand(sender, params)

    def _cmd_rcpt(self, argument: str) -> Event | None:
        self._require_hello()
        if not self._has_sender or self._body_method is not None:
            raise ReplyError(_NEED_MAIL if not self._has_sender else
                             Reply(503, "Message data already started", "5.5.1"))
        path = path_argument(argument, "TO:", "5.5.4")
        recipient, rest = parse_forward_path(path, utf8=self.config.smtputf8)
        self._check_no_params_after_helo(rest)
        params = parse_rcpt_params(rest, self._extensions())
        smtputf8 = self._mail_params is not None and self._mail_params.smtputf8
        if not recipient.is_ascii and not smtputf8:
            raise ReplyError(Reply(553, "Non-ASCII recipient address requires SMTPUTF8", "5.6.7"))
        if len(self._recipients) >= self.config.max_recipients:
            # RFC 5321 4.5.3.1.10: a transient reply, so the client retries the rest.
            self._send(Reply(452, "Too many recipients", "4.5.3"))
            return None
        return RcptCommand(recipient, params)

    def _cmd_data(self, argument: str) -> Event | None:
        self._check_body_start("DATA")
        if argument:
            raise ReplyError(Reply(501, "Syntax: DATA takes no arguments", "5.5.4"))
        if self._mail_params is not None and self._mail_params.body == "BINARYMIME":
            raise ReplyError(Reply(503, "BODY=BINARYMIME needs BDAT, not DATA", "5.5.1"))
        return BodyStart("DATA")

    def _cmd_bdat(self, argument: str) -> Event | None:
        size, last = parse_bdat(argument)
        # Whatever is wrong, the chunk's octets are on their way: consume them before the
        # reply, or they would be read as commands (go-smtp #315).
        if not self.config.chunking:
            self._discard_chunk(size, Reply(502, "BDAT not implemented", "5.5.1"))
            return None
        if self._body_method != "BDAT":
            try:
                self._check_body_start("BDAT")
            except ReplyError as exc:
                self._discard_chunk(size, exc.reply)
                return None
        limit = self.config.max_message_size
        if limit is not None and self._bdat_size + size > limit:
            started = self._body_method == "BDAT"
            self._discard_chunk(size, REPLY_TOO_BIG, client_error=False, fails=True,
                                last=last)
            return MessageAborted(REPLY_TOO_BIG) if started else None
        self._chunk_size, self._chunk_last = size, last
        if self._body_method is None:
            return BodyStart("BDAT")
        self._start_chunk(discard=False)
        return None

    def _refuse_bdat(self, argument: str, reply: Reply) -> None:
        """Refuse a BDAT command, consuming its chunk when its size can be known."""
        try:
            size, _ = parse_bdat(argument)
        except ReplyError:
            self._error(reply)
        else:
            self._discard_chunk(size, reply)

    def _cmd_rset(self, argument: str) -> Event | None:
        if argument:
            raise ReplyError(Reply(501, "Syntax: RSET takes no arguments", "5.5.4"))
        event = self._reset("RSET")
        self._send(_OK)
        return event

    def _cmd_noop(self, argument: str) -> Event | None:
        self._send(_OK)
        return None

    def _cmd_quit(self, argument: str) -> Event | None:
        if argument:
            raise ReplyError(Reply(501, "Syntax: QUIT takes no arguments", "5.5.4"))
        self._send_raw(_cached(self.config, ("closing", self._enhanced), self._closing_bytes))
        return self._close("QUIT")

    def _cmd_help(self, argument: str) -> Event | None:
        self._send(Reply(214, ["Commands: " + " ".join(self._commands_offered()),
                               "See RFC 5321"], "2.0.0"))
        return None

    def _cmd_vrfy(self, argument: str) -> Event | None:
        if not argument:
            raise ReplyError(Reply(501, "Syntax: VRFY <address>", "5.5.4"))
        # RFC 5321 3.5.3: 252 says neither yes nor no, so no address is disclosed.
        self._send(Reply(252, "Cannot VRFY user, but will accept message and attempt delivery",
                         "2.5.0"))
        return None

    def _cmd_expn(self, argument: str) -> Event | None:
        raise ReplyError(Reply(502, "EXPN not available", "5.5.1"))

    def _cmd_starttls(self, argument: str) -> Event | None:
        if not self.config.tls_available:
            raise ReplyError(Reply(502, "STARTTLS not available", "5.5.1"))
        if self.tls_active:
            raise ReplyError(Reply(503, "TLS already active", "5.5.1"))
        self._require_hello()
        if argument:
            raise ReplyError(Reply(501, "Syntax: STARTTLS takes no arguments", "5.5.4"))
        self._send(Reply(220, "Ready to start TLS", "2.0.0"))
        # CVE-2011-0411 class: anything pipelined behind STARTTLS was sent in plaintext
        # and must not be read as if it came through TLS.
        if self._buffer:
            if self.observer is not None:
                self.observer.received(Summary(f"[{len(self._buffer)} octets after "
                                               "STARTTLS discarded]"))
            self._buffer.clear()
        event = self._reset("STARTTLS")
        if event is not None:
            self._queue(event)
        self.hello_name = self.hello_verb = None
        self.mode = Mode.TLS_HANDSHAKE
        return StartTLS()

    def _cmd_auth(self, argument: str) -> Event | None:
        self._require_hello()
        config = self.config
        if not (config.auth_mechanisms or config.cleartext_auth_mechanisms):
            raise ReplyError(Reply(502, "AUTH not available", "5.5.1"))
        permitted = self._auth_permitted()
        if not permitted and not config.cleartext_auth_mechanisms:
            raise ReplyError(_ENCRYPTION_REQUIRED)
        if self.authenticated_as is not None:
            raise ReplyError(Reply(503, "Already authenticated", "5.5.1"))
        if self._has_sender:
            raise ReplyError(Reply(503, "AUTH not allowed during a mail transaction", "5.5.1"))
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if not mechanism or " " in initial:
            raise ReplyError(Reply(501, "Syntax: AUTH <mechanism> [initial-response]",
                                   "5.5.4"))
        if mechanism not in self.offered_auth_mechanisms:
            if not permitted and mechanism in config.auth_mechanisms:
                raise ReplyError(_ENCRYPTION_REQUIRED)
            raise ReplyError(Reply(504, "Unrecognized authentication mechanism", "5.5.4"))
        if not initial:
            response = None
        elif initial == "=":
            response = b""  # RFC 4954 4: "=" is an empty initial response
        else:
            response = _b64decode(initial)
        return AuthStart(mechanism, response)

    def _cmd_xclient(self, argument: str) -> Event | None:
        if not self.config.xclient:
            # (counted: a client that keeps trying is closed, as after other errors)
            self._error(_XCLIENT_REFUSED, counted=True)
            return None
        if self._has_sender:
            raise ReplyError(_XCLIENT_IN_TRANSACTION)
        attributes = parse_xclient(argument)
        # Postfix starts the session over, greeting the client it was told about; so
        # do we: that client's ConnectionOpened comes next, then its hello and AUTH.
        self.hello_name = self.hello_verb = None
        login = attributes.get("LOGIN")
        self.authenticated_as = None if login in (None, "[UNAVAILABLE]") else login
        self._auth_failures = 0
        self._verb = "CONNECT"
        self.mode = Mode.GREETING
        return XclientCommand(attributes)

    def _auth_line(self, raw: bytes) -> Event | None:
        line = raw.rstrip(b"\r\n")
        self.mode = Mode.COMMAND
        if self.observer is not None:
            self.observer.received("*" if line == b"*"
                                   else Summary("[AUTH response: redacted]"))
        if line == b"*":
            self._error(Reply(501, "Authentication cancelled", "5.0.0"))
            return None
        try:
            data = _b64decode(line.decode("ascii"))
        except (ReplyError, UnicodeDecodeError):
            self._error(Reply(501, "Invalid base64 in authentication response", "5.5.2"))
            return None
        self.mode = Mode.AUTH
        return AuthResponse(data)

    # ------------------------------------------------------------------ message bodies

    def _step_data(self) -> Event | NeedData | None:
        reader = self._dot_reader
        assert reader is not None
        data = reader.read(self._buffer)
        if reader.done:
            self._dot_reader = None
            self.mode = Mode.COMMAND
            if data:
                self._queue(self._data(data))
            return self._end_of_body(reader.error, reader.size)
        if data:
            return self._data(data)
        return NEED_DATA

    def _step_bdat(self) -> Event | NeedData | None:
        chunk = self._chunk
        assert chunk is not None
        data = chunk.read(self._buffer)
        if not data and not chunk.done:
            return NEED_DATA
        self._bdat_size += len(data)
        if not chunk.done:
            return self._data(data)
        self._chunk = None
        self.mode = Mode.COMMAND
        if data:
            self._queue(self._data(data))
        refusal = self._chunk_refusal
        if refusal is not None:
            self._chunk_refusal = None
            reply, client_error, fails = refusal
            if self._chunk_last:  # (only a failing LAST chunk keeps that mark)
                self._refuse_message(reply)
                return None
            if fails:
                # RFC 3030 2: a refused chunk fails the whole transaction.
                self._clear_transaction()
            if client_error:
                self._error(reply)
                return None
            self._send(reply)
            return None
        if self._chunk_last:
            return self._end_of_body(None, self._bdat_size)
        self._send(Reply(250, f"{self._chunk_size} octets received", "2.0.0"))
        return None

    def _data(self, data: bytes) -> MessageData:
        observer = self.observer
        if observer is not None and observer.wants_data:
            observer.data(data)
        return MessageData(data)

    def _end_of_body(self, error: Reply | None, size: int) -> Event | None:
        if self.observer is not None:
            self.observer.received(Summary(f"[message data: {size} octets]"))
        if error is not None:
            self._refuse_message(error)
            return MessageAborted(error)
        return EndOfMessage(size)

    def _refuse_message(self, reply: Reply) -> None:
        """Refuse a message whose end has come, and end its transaction. An LMTP client
        reads one reply per accepted recipient after the end (RFC 2033 4.2), whoever
        refused it."""
        replies = len(self._recipients) if self.config.lmtp else 1
        for _ in range(max(replies, 1)):  # (never none: the client waits for one)
            self._send(reply)
        self._clear_transaction()

    def _discard_chunk(self, size: int, reply: Reply, *, client_error: bool = True,
                       fails: bool = False, last: bool = False) -> None:
        """Read and drop a BDAT chunk's octets, then give ``reply`` (for a LAST chunk
        that ``fails`` the message, as the message's refusal)."""
        self._chunk_size, self._chunk_last = size, last and fails
        self._chunk_refusal = (reply, client_error, fails)
        self._start_chunk(discard=True)

    def _start_chunk(self, *, discard: bool) -> None:
        self._chunk = ChunkReader(self._chunk_size, discard=discard)
        self.mode = Mode.BDAT

    # ------------------------------------------------------------------ answering decisions

    def _answer_connect(self, decision: ConnectionOpened, reply: Reply | None) -> None:
        if reply is None or reply.code == 220:
            if reply is None:
                self._send_raw(self._greeting())
            else:
                self._send(reply)
            self.mode = Mode.COMMAND
        elif reply.code == 554:
            # RFC 5321 3.1: refuse service but stay for QUIT, answering other commands 503.
            self._send(reply)
            self._refused = True
            self.mode = Mode.COMMAND
        else:
            raise UsageError("a greeting is 220, 554, or 421")

    def _answer_hello(self, decision: HelloCommand, reply: Reply | None) -> None:
        if reply is not None and reply.code >= 400:
            self._send(reply)
            self.hello_name = self.hello_verb = None
            return
        _check(reply, (250,), "HELO")
        self.hello_name, self.hello_verb = decision.name, decision.verb
        # The client's name passed the control-character check of every command line;
        # the application's text (Hello.accept) the checks of every reply line.
        text = f"greets {decision.name}" if reply is None else reply.lines[0]
        greeting = f"{self.config.hostname} {text}".rstrip()
        if decision.verb == "HELO":
            self._send(Reply(250, greeting))
            return
        # The lines after the first are the same for every client: made once per config.
        keywords = _cached(self.config, ("ehlo", self.tls_active), self._ehlo_bytes)
        self._send_raw(b"250-" + greeting.encode("utf-8") + _CRLF + keywords)

    def _answer_mail(self, decision: MailCommand, reply: Reply | None) -> None:
        if reply is not None and reply.code >= 400:
            self._send(reply)
            return
        self._send(_check(reply, (250,), "MAIL") or _SENDER_OK)
        self._has_sender = True
        self._sender, self._mail_params = decision.sender, decision.params

    def _answer_rcpt(self, decision: RcptCommand, reply: Reply | None) -> None:
        if reply is not None and reply.code >= 400:
            self._send(reply)
            return
        self._send(_check(reply, (250, 251, 252), "RCPT") or _RECIPIENT_OK)
        self._recipients.append(Recipient(decision.recipient, decision.params))

    def _answer_data_start(self, decision: BodyStart, reply: Reply | None) -> None:
        if decision.method == "BDAT":
            if reply is not None and reply.code >= 400:
                # The refused chunk's octets are still on their way: drop them, then answer.
                self._discard_chunk(self._chunk_size, reply, client_error=False, fails=True)
                return
            self._body_method = "BDAT"
            self._start_chunk(discard=False)
            return
        if reply is not None and reply.code >= 400:
            self._send(reply)
            return
        self._send(_check(reply, (354,), "DATA") or _START_DATA)
        self._body_method = "DATA"
        self._dot_reader = DotReader(
            max_size=self.config.max_message_size,
            max_line=self.config.max_data_line_length,
            keep_bare=self.config.bare_line_endings == "keep",
        )
        self.mode = Mode.DATA

    def _take_auth_decision(self) -> None:
        if not isinstance(self._pending, AuthStart | AuthResponse):
            raise UsageError("no AUTH exchange is pending")
        self._pending = None

    # ------------------------------------------------------------------ helpers

    def _queue(self, event: Event) -> None:
        if self._queued is None:
            self._queued = [event]
        else:
            self._queued.append(event)

    def _send(self, reply: Reply) -> None:
        data = reply.to_bytes(enhanced_codes=self._enhanced)
        self._out += data
        observer = self.observer
        if observer is not None:
            observer.sent(data)
            if reply.code >= 400:
                observer.refused(self._verb, reply)

    def _send_raw(self, data: bytes) -> None:
        self._out += data
        if self.observer is not None:
            self.observer.sent(data)

    def _error(self, reply: Reply, *, counted: bool = False) -> None:
        """Answer a protocol error, counting it; past the limit, 421 and close instead."""
        if counted or reply.code in _BAD_COMMAND_CODES:
            self._bad_commands += 1
            if self._bad_commands > self.config.max_bad_commands:
                self._last_word(_TOO_MANY_ERRORS, "ERRORS")
                return None
        self._send(reply)
        return None

    def _last_word(self, reply: Reply, reason: str = "CLOSING") -> None:
        """Send ``reply`` (a 421, as a rule: RFC 5321 3.8) and close after it."""
        self._send(reply)
        self._queue(self._close(reason))

    def _close(self, reason: str) -> ConnectionClosed:
        self.mode = Mode.CLOSED
        self._buffer.clear()
        self._discarding_line = False
        return ConnectionClosed(reason)  # type: ignore[arg-type]

    def _end_of_file(self) -> Event:
        # The client is gone: anything half-received is dropped and nothing is answered.
        started = self._body_method is not None
        closed = self._close("EOF")
        if started:
            self._queue(closed)
            return MessageAborted(None)
        return closed

    def _require_hello(self) -> None:
        if self.hello_name is None:
            raise ReplyError(_NO_LHLO if self.config.lmtp else _NO_HELLO)

    def _check_body_start(self, method: str) -> None:
        self._require_hello()
        if not self._has_sender:
            raise ReplyError(_NEED_MAIL)
        if self._body_method is not None:
            raise ReplyError(Reply(503, f"{method} not allowed: message data already started",
                                   "5.5.1"))
        if not self._recipients:
            raise ReplyError(_NEED_RCPT)

    def _reset(self, reason: str) -> Reset | None:
        had_transaction = self._has_sender
        self._clear_transaction()
        return Reset(reason) if had_transaction else None  # type: ignore[arg-type]

    def _clear_transaction(self) -> None:
        self._has_sender = False
        self._sender = None
        self._mail_params = None
        if self._recipients:
            self._recipients = []
        self._body_method = None
        self._bdat_size = 0
        self._chunk_size = 0

    def _auth_permitted(self) -> bool:
        return self.tls_active or not self.config.auth_requires_tls

    def _check_no_params_after_helo(self, rest: str) -> None:
        # ESMTP parameters need EHLO (RFC 5321 4.1.1.1); after HELO there are none.
        if (self.hello_verb == "HELO" and rest.strip(" ")
                and not self.config.accept_params_after_helo):
            raise ReplyError(Reply(555, "Parameters need EHLO, not HELO", "5.5.4"))

    def _extensions(self) -> EnabledExtensions:
        # Asked at every MAIL and RCPT; it only changes with the config or TLS.
        key = ("extensions", self.tls_active)
        extensions = self.config._cache.get(key)
        if extensions is None:
            extensions = self.config._cache[key] = self._make_extensions()
        assert isinstance(extensions, EnabledExtensions)
        return extensions

    def _make_extensions(self) -> EnabledExtensions:
        config = self.config
        return EnabledExtensions(
            max_message_size=config.max_message_size,
            eightbitmime=config.eightbitmime,
            binarymime=config.chunking and config.binarymime,
            smtputf8=config.smtputf8,
            dsn=config.dsn,
            auth=bool(config.auth_mechanisms or config.cleartext_auth_mechanisms),
            requiretls=config.requiretls and self.tls_active,
        )

    def _greeting_bytes(self) -> bytes:
        return greeting(self.config, self.config.greeting or ("trio_smtpd ready",)).to_bytes()

    def _greeting(self) -> bytes:
        if not self.config.greeting_time:
            return _cached(self.config, "greeting", self._greeting_bytes)
        # (RFC 5322 date, as Sendmail and the Go smtpd's SayTime give it: not cached.)
        greeting = self._greeting_bytes()
        return greeting[:-2] + b" " + email.utils.formatdate().encode() + b"\r\n"

    def _closing_bytes(self) -> bytes:
        closing = Reply(221, f"{self.config.hostname} closing connection", "2.0.0")
        return closing.to_bytes(enhanced_codes=self._enhanced)

    def _ehlo_bytes(self) -> bytes:
        return Reply(250, self._ehlo_keywords()).to_bytes()

    def _ehlo_keywords(self) -> list[str]:
        config = self.config
        keywords = []
        if config.pipelining:
            keywords.append("PIPELINING")
        if config.eightbitmime:
            keywords.append("8BITMIME")
        size = config.max_message_size
        keywords.append("SIZE" if size is None else f"SIZE {size}")
        if config.enhanced_status_codes:
            keywords.append("ENHANCEDSTATUSCODES")
        if config.smtputf8:
            keywords.append("SMTPUTF8")
        if config.chunking:
            keywords.append("CHUNKING")
            if config.binarymime:
                keywords.append("BINARYMIME")
        if config.dsn:
            keywords.append("DSN")
        if config.tls_available and not self.tls_active:
            keywords.append("STARTTLS")
        offered = self.offered_auth_mechanisms
        if offered:
            keywords.append("AUTH " + " ".join(offered))
        if config.requiretls and self.tls_active:
            keywords.append("REQUIRETLS")
        keywords.append(f"LIMITS RCPTMAX={config.max_recipients}")
        if config.xclient:
            keywords.append("XCLIENT " + " ".join(ATTRIBUTES))
        keywords.extend(config.extra_ehlo_keywords)
        keywords.append("HELP")
        return keywords

    def _commands_offered(self) -> list[str]:
        config = self.config
        withheld = {"LHLO"} if not config.lmtp else {"HELO", "EHLO"}
        if not config.chunking:
            withheld.add("BDAT")
        if not config.tls_available or self.tls_active:
            withheld.add("STARTTLS")
        if not self.offered_auth_mechanisms:
            withheld.add("AUTH")
        if not config.xclient:
            withheld.add("XCLIENT")
        return [verb for verb in _HANDLERS if verb not in withheld]


# Decision type -> how to apply its answer (AUTH decisions have calls of their own).
_ANSWERS: dict[type[Request], Callable[[ServerConnection, Any, Reply | None], None]] = {
    ConnectionOpened: ServerConnection._answer_connect,
    HelloCommand: ServerConnection._answer_hello,
    MailCommand: ServerConnection._answer_mail,
    RcptCommand: ServerConnection._answer_rcpt,
    BodyStart: ServerConnection._answer_data_start,
    EndOfMessage: ServerConnection._answer_message,
}

# Verb -> handler, shared by every connection (a dict of bound methods each would be
# kept by every idle connection).
_HANDLERS: dict[str, Callable[[ServerConnection, str], Event | None]] = {
    "HELO": ServerConnection._cmd_helo,
    "EHLO": ServerConnection._cmd_ehlo,
    "LHLO": ServerConnection._cmd_lhlo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "QUIT": ServerConnection._cmd_quit,
    "HELP": ServerConnection._cmd_help,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
    "XCLIENT": ServerConnection._cmd_xclient,
}


def _cached(config: ProtocolConfig, key: object, make: Callable[[], bytes]) -> bytes:
    """A reply that depends only on the config (and ``key``), serialised once per config."""
    cache = config._cache
    wire = cache.get(key)
    if wire is None:
        wire = cache[key] = make()
    assert isinstance(wire, bytes)
    return wire


def _check(reply: Reply | None, codes: tuple[int, ...], what: str) -> Reply | None:
    """Refuse a positive reply whose code makes no sense for this decision."""
    if reply is not None and reply.code < 400 and codes and reply.code not in codes:
        raise UsageError(f"{reply.code} is not a positive reply to {what}")
    return reply


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ReplyError(Reply(501, "Invalid base64 data", "5.5.2")) from None


def greeting(config: ProtocolConfig, lines: Sequence[str]) -> Reply:
    """A 220 greeting with ``lines`` of text after the server's name, where RFC 5321 4.2
    has a greeting begin: ``220 <hostname> ESMTP <text>``."""
    first, *rest = lines
    kind = "LMTP" if config.lmtp else "ESMTP"
    return Reply(220, [f"{config.hostname} {kind} {first}", *rest])


def _redacted(verb: str, line: str, *, after: str) -> str:
    """A command line as an observer may see it: AUTH's initial response hidden, and so
    is a line that is no command right after AUTH (a response the client sent before
    reading that AUTH had failed)."""
    if verb == "AUTH":
        mechanism, _, initial = line[5:].partition(" ")
        return f"AUTH {mechanism} [redacted]" if initial else line
    if after == "AUTH" and verb not in _HANDLERS:
        return Summary("[line after AUTH: redacted]")
    return line
