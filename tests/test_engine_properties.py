"""Property-based tests of the sans-I/O engine (hypothesis and hypothesis.stateful).

Two oracles:

* ``Driver`` drives a ``ServerConnection`` the way a correct caller does (answering every
  decision at once with a randomly drawn verdict, draining the output after every call) and
  checks the invariants that hold for *any* input after every single step: nothing raises,
  the receive buffer stays within the line limits, replies are well-formed lines, message
  data only flows inside an accepted message with at least one accepted recipient and never
  past the size limit, and nothing at all happens after ``ConnectionClosed``.
* ``Model`` is an independent reference interpreter of a session. It reads the whole byte
  stream at once (so its framing is simple: find the next LF, the next CRLF.CRLF, count N
  octets) and predicts every reply code, every event and every delivered message body.
  Sessions are built from a protocol vocabulary (good and bad commands, DATA bodies with
  dots and bare CR/LF, BDAT chunks of right and wrong sizes, AUTH exchanges, STARTTLS,
  QUIT, EOF), pipelined or not, and fed to the engine split at random points; the engine
  must agree with the model, which in particular means exactly one reply per command line
  (LMTP: one per accepted recipient after the data).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trio_smtpd.core import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    AuthStart,
    BodyStart,
    ConnectionClosed,
    EndOfMessage,
    Event,
    MessageAborted,
    MessageData,
    Mode,
    ProtocolConfig,
    Reply,
    Request,
    Reset,
    ServerConnection,
    StartTLS,
)

# ----------------------------------------------------------------------- the application

# Replies the application gives when it refuses something.
REPLIES: dict[int, Reply] = {
    421: Reply(421, "Shutting down", "4.3.2"),
    451: Reply(451, "Try again later", "4.3.0"),
    452: Reply(452, "Mailbox full", "4.2.2"),
    454: Reply(454, "Temporary authentication failure", "4.7.0"),
    550: Reply(550, "Refused", "5.7.1"),
    553: Reply(553, "Not allowed", "5.7.1"),
    554: Reply(554, "Rejected", "5.7.1"),
}

# A verdict is None (accept: the default positive reply) or the code of a refusal. The
# application's answers are drawn as small integers indexing these tables.
_VERDICTS: tuple[int | None, ...] = (None,) * 24 + (451, 451, 550, 550, 553, 554, 554, 421)
_GREETINGS: tuple[int | None, ...] = (None,) * 28 + (554, 554, 554, 421)
_LMTP_VERDICTS: tuple[int | None, ...] = (None,) * 24 + (451, 451, 452, 550, 550, 553, 554, 554)
_AUTH_ACTIONS = ("challenge", "success", "failure", "failure-454")
CHOICES = st.lists(st.integers(0, 31), max_size=24)


@dataclass
class Policy:
    """The application's answers, taken in order (cycling) from drawn choices."""

    choices: Sequence[int]
    used: int = 0

    def _next(self) -> int:
        choice = self.choices[self.used % len(self.choices)] if self.choices else 0
        self.used += 1
        return choice

    def verdict(self, decision: str) -> int | None:
        return (_GREETINGS if decision == "ConnectionOpened" else _VERDICTS)[self._next()]

    def lmtp_verdict(self) -> int | None:
        return _LMTP_VERDICTS[self._next()]

    def auth_action(self) -> str:
        return _AUTH_ACTIONS[self._next() % len(_AUTH_ACTIONS)]


def _reply(verdict: int | None) -> Reply | None:
    return None if verdict is None else REPLIES[verdict]


# ----------------------------------------------------------------------- the driver

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")


def reply_codes(out: bytes) -> list[int]:
    """The code of every final reply line; fails unless ``out`` is well-formed replies."""
    codes: list[int] = []
    continued: int | None = None
    pos = 0
    while pos < len(out):
        match = _REPLY_LINE.match(out, pos)
        assert match is not None, f"malformed reply line: {out[pos:pos + 80]!r}"
        code = int(match[1])
        assert continued in (None, code), f"continuation of {continued} has code {code}"
        if match[2] == b"-":
            continued = code
        else:
            codes.append(code)
            continued = None
        pos = match.end()
    assert continued is None, "multi-line reply without its last line"
    return codes


@dataclass
class Driver:
    """Drives a ServerConnection correctly and checks the invariants after every step."""

    config: ProtocolConfig
    policy: Policy
    tls_active: bool = False
    conn: ServerConnection = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    #: Names of all events but MessageData, in order.
    kinds: list[str] = field(default_factory=list)
    #: The body of every message that reached EndOfMessage.
    messages: list[bytes] = field(default_factory=list)
    #: Every chunk given to receive_data (not the final b"").
    reads: list[bytes] = field(default_factory=list)
    #: The body so far of the message being received (after an accepted DataStart).
    message: bytearray | None = None
    closed: bool = False
    eof: bool = False
    last_read: int = 0

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.config, tls_active=self.tls_active)
        self.pump()

    # -- what a client and the I/O layer do

    def feed(self, data: bytes) -> None:
        assert data and not self.eof
        self.reads.append(data)
        self.conn.receive_data(data)
        self.last_read = len(data)
        self.pump()

    def send_eof(self) -> None:
        self.eof = True
        self.conn.receive_data(b"")
        self.last_read = 0
        self.pump()

    def close_with(self) -> None:
        self.conn.close_with(REPLIES[421])
        self.drain()
        self.pump()

    # -- the event loop

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            self.drain()
            self.check_buffer()
            if event is NEED_DATA:
                break
            if event is PAUSED:  # (drained above)
                continue
            assert isinstance(event, Event)
            self.handle(event)
        self.check_buffer(at_rest=True)
        assert self.closed == self.conn.closed

    def drain(self) -> None:
        data = self.conn.data_to_send()
        assert not (self.closed and data), f"reply after ConnectionClosed: {data!r}"
        self.out += data
        assert self.conn.data_to_send() == b""

    def handle(self, event: Event) -> None:
        conn = self.conn
        assert not self.closed, f"{event!r} after ConnectionClosed"
        if isinstance(event, MessageData):
            assert self.message is not None, "MessageData outside an accepted message"
            assert conn.recipients, "MessageData without an accepted recipient"
            self.message += event.data
            limit = self.config.max_message_size
            assert limit is None or len(self.message) <= limit, "message data over the limit"
            return
        self.kinds.append(type(event).__name__)
        if isinstance(event, BodyStart):
            assert self.message is None, "DataStart inside a message"
            assert conn.recipients and conn.in_transaction, "DataStart without recipients"
        elif isinstance(event, EndOfMessage):
            assert self.message is not None, "EndOfMessage outside an accepted message"
            assert event.size == len(self.message)
            assert conn.recipients
            self.messages.append(bytes(self.message))
            self.message = None
        elif isinstance(event, MessageAborted):
            assert self.message is not None, "MessageAborted outside an accepted message"
            self.message = None
        elif isinstance(event, Reset):
            self.message = None
        elif isinstance(event, ConnectionClosed):
            self.message = None
            self.closed = True
            assert conn.closed and conn.buffered == 0
        elif isinstance(event, StartTLS):
            assert conn.mode is Mode.TLS_HANDSHAKE and conn.buffered == 0
            assert conn.hello_name is None and not conn.in_transaction
            conn.tls_established()
        if isinstance(event, Request):
            self.answer(event)
            self.drain()
        self.check_state()

    def answer(self, decision: Request) -> None:
        conn, policy = self.conn, self.policy
        if isinstance(decision, AuthStart | AuthResponse):
            action = policy.auth_action()
            if action == "challenge":
                conn.auth_challenge(b"challenge")
            elif action == "success":
                conn.auth_success("user")
            elif action == "failure":
                conn.auth_failure()
            else:
                conn.auth_failure(REPLIES[454])
        elif isinstance(decision, EndOfMessage) and self.config.lmtp:
            conn.respond_per_recipient([_reply(policy.lmtp_verdict()) for _ in conn.recipients])
        else:
            verdict = policy.verdict(type(decision).__name__)
            conn.respond(_reply(verdict))
            if isinstance(decision, BodyStart) and verdict is None:
                assert conn.mode is (Mode.DATA if decision.method == "DATA" else Mode.BDAT)
                self.message = bytearray()

    # -- invariants

    def check_state(self) -> None:
        """Nothing the RFCs forbid: body data is only taken for a message with recipients."""
        conn = self.conn
        if conn.mode is Mode.DATA:
            assert self.message is not None and conn.recipients, "DATA mode without recipients"
        if self.message is not None:
            assert conn.recipients and conn.in_transaction, "message without recipients"
            assert conn.mode in (Mode.DATA, Mode.BDAT, Mode.COMMAND)

    def line_limit(self) -> int:
        config, mode = self.config, self.conn.mode
        if mode is Mode.AUTH:
            return config.max_auth_line_length
        if mode is Mode.DATA:
            return config.max_data_line_length
        if mode in (Mode.COMMAND, Mode.GREETING):
            return config.max_command_line_length + config.command_line_allowance
        return 0  # BDAT, TLS handshake, closed: no line is being put together

    def check_buffer(self, *, at_rest: bool = False) -> None:
        buffered, limit = self.conn.buffered, self.line_limit()
        assert buffered <= limit + self.last_read, (self.conn.mode, buffered, limit)
        if at_rest and self.conn.mode is not Mode.DATA:
            # Waiting for bytes: at most one unfinished line, shorter than the limit.
            assert buffered < max(limit, 1), (self.conn.mode, buffered, limit)


# ----------------------------------------------------------------------- the model

_VERBS = frozenset({"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP",
                    "QUIT", "HELP", "VRFY", "EXPN", "STARTTLS", "AUTH"})
_BAD_COMMAND_CODES = frozenset({500, 501, 502, 503, 504, 555})  # RFC 5321 4.2.2
_BDAT_ARGUMENT = re.compile(r"([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE)  # RFC 3030 2
_ADDRESSES = ("<a@example.org>", "<b@example.net>", "<c@example.net>", "<d@example.net>")
_BAD_PATHS = ("a@example.org", "b@example.net", "<>")


class ModelGap(AssertionError):
    """The session holds something the model was not written for: a bug in this test."""


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass
class Prediction:
    replies: list[frozenset[int]]  # the allowed codes of each final reply line, in order
    kinds: list[str]
    messages: list[bytes]


class Model:
    """What a session must look like, from the RFCs and the engine's documented policy."""

    def __init__(self, config: ProtocolConfig, choices: Sequence[int], *,
                 tls_active: bool = False) -> None:
        self.config = config
        self.policy = Policy(choices)
        self.tls_active = tls_active
        self.replies: list[frozenset[int]] = []
        self.kinds: list[str] = []
        self.messages: list[bytes] = []
        self.mode = "command"  # or "auth", "data", "bdat", "tls"
        self.closed = False
        self.refused = False  # greeted with 554: only QUIT is served
        self.hello: str | None = None
        self.authenticated = False
        self.bad_commands = 0
        self.auth_failures = 0
        self.handlers: dict[str, Callable[[str, str], None]] = {
            "HELO": self.cmd_hello, "EHLO": self.cmd_hello, "LHLO": self.cmd_hello,
            "MAIL": self.cmd_mail, "RCPT": self.cmd_rcpt, "DATA": self.cmd_data,
            "BDAT": self.cmd_bdat, "RSET": self.cmd_rset, "NOOP": self.cmd_noop,
            "QUIT": self.cmd_quit, "HELP": self.cmd_help, "VRFY": self.cmd_vrfy,
            "EXPN": self.cmd_expn, "STARTTLS": self.cmd_starttls, "AUTH": self.cmd_auth,
        }
        # The mail transaction.
        self.has_sender = False
        self.binarymime = False
        self.recipients = 0
        self.body_method: str | None = None
        self.message_open = False  # between an accepted DataStart and its end
        self.chunks: list[bytes] = []
        self.chunk_size = 0
        self.chunk_last = False
        self.chunk_refusal: tuple[int, bool, bool] | None = None  # code, counted, fails
        self.refused_last = False  # the refused chunk ended the message (BDAT ... LAST)

    # -- the byte stream

    def run(self, reads: Sequence[bytes], *, eof: bool = False,
            close_at: int | None = None) -> Prediction:
        """Predict the session for these reads, then EOF or ``close_with`` (421)."""
        if not self.decide("ConnectionOpened", accept=220) and not self.closed:
            self.refused = True  # 554: RFC 5321 3.1, only QUIT is served
        if close_at is not None:
            reads = reads[:close_at]
        read_ends = list(itertools.accumulate(len(read) for read in reads))
        data = b"".join(reads)
        pos = 0
        while not self.closed:
            if self.mode == "data":
                # The CRLF that ended DATA counts as the start of the first line.
                wire = b"\r\n" + data[pos:]
                end = wire.find(b"\r\n.\r\n")
                if end < 0:
                    break
                pos += end + 3
                self.end_of_data(wire[2:end + 2])
            elif self.mode == "bdat":
                if len(data) - pos < self.chunk_size:
                    break
                chunk = data[pos:pos + self.chunk_size]
                pos += self.chunk_size
                self.end_of_chunk(chunk)
            else:
                lf = data.find(b"\n", pos)
                if lf < 0:
                    break
                raw, pos = data[pos:lf + 1], lf + 1
                if self.mode == "auth":
                    self.auth_line(raw)
                else:
                    self.command_line(raw)
                if self.mode == "tls":
                    # Plaintext behind STARTTLS (the rest of its read) is thrown away.
                    pos = next(end for end in read_ends if end >= pos)
                    self.mode = "command"
        if not self.closed:
            if close_at is not None:
                self.reply(421)
                self.close()
            elif eof:
                if self.message_open:
                    self.kinds.append("MessageAborted")
                self.close()
        return Prediction(self.replies, self.kinds, self.messages)

    # -- helpers

    def reply(self, *codes: int) -> None:
        self.replies.append(frozenset(codes))

    def error(self, code: int) -> None:
        if code in _BAD_COMMAND_CODES:
            self.bad_commands += 1
            if self.bad_commands > self.config.max_bad_commands:
                self.reply(421)
                self.close()
                return
        self.reply(code)

    def close(self) -> None:
        self.closed = True
        self.message_open = False
        self.kinds.append("ConnectionClosed")

    def decide(self, kind: str, accept: int) -> bool:
        """A decision; True if accepted (with reply ``accept``). 421 closes."""
        self.kinds.append(kind)
        verdict = self.policy.verdict(kind)
        if verdict is None:
            self.reply(accept)
            return True
        self.reply(verdict)
        if verdict == 421:
            self.close()
        return False

    def clear(self) -> None:
        self.has_sender = self.binarymime = self.message_open = False
        self.recipients = 0
        self.body_method = None
        self.chunks = []

    def reset(self) -> None:
        if self.has_sender:
            self.kinds.append("Reset")
        self.clear()

    def body_start_error(self) -> int | None:
        if self.hello is None or not self.has_sender or self.body_method is not None:
            return 503
        if not self.recipients:
            return 554
        return None

    def path(self, path: str, *, sender: bool) -> str | None:
        """The text after a known path, or None for a syntax error (501)."""
        if not sender and path[:12].lower() == "<postmaster>":
            rest = path[12:]
        else:
            for address in (*_ADDRESSES, "<>") if sender else _ADDRESSES:
                if path.startswith(address):
                    rest = path[len(address):]
                    break
            else:
                if path in _BAD_PATHS:
                    return None
                raise ModelGap(f"path {path!r}")
        return rest if not rest or rest[0] == " " else None

    # -- command lines

    def command_line(self, raw: bytes) -> None:
        config = self.config
        if len(raw) > config.max_command_line_length + config.command_line_allowance:
            self.error(500)
            return
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.error(500)
            return
        verb, _, argument = text.partition(" ")
        if not re.fullmatch(r"[A-Za-z]{1,16}", verb) or verb.upper() not in _VERBS:
            self.error(500)
            return
        verb, argument = verb.upper(), argument.strip(" ")
        refusal = None
        if len(raw) > config.max_command_line_length and verb not in ("MAIL", "RCPT"):
            refusal = 500
        elif any(c < " " or c == "\x7f" for c in argument):
            refusal = 501
        elif self.refused and verb != "QUIT":
            refusal = 503
        if refusal is None:
            self.handlers[verb](verb, argument)
            return
        # A refused BDAT's chunk is still read (and dropped) when its size can be known.
        bdat = _BDAT_ARGUMENT.fullmatch(argument) if verb == "BDAT" else None
        if bdat is not None:
            self.discard(int(bdat[1]), refusal, counted=True)
        else:
            self.error(refusal)

    def cmd_hello(self, verb: str, argument: str) -> None:
        if self.config.lmtp != (verb == "LHLO"):
            self.error(500)
        elif not argument:
            self.error(501)
        else:
            self.reset()
            self.hello = verb if self.decide("HelloCommand", accept=250) else None

    def cmd_mail(self, verb: str, argument: str) -> None:
        config = self.config
        if self.hello is None or self.has_sender:
            self.error(503)
            return
        if (config.require_tls and not self.tls_active) or (
                config.require_auth and not self.authenticated):
            self.error(530)
            return
        rest = None
        if argument[:5].upper() == "FROM:":
            rest = self.path(argument[5:].lstrip(" "), sender=True)
        if rest is None:
            self.error(501)
            return
        if self.hello == "HELO" and rest.strip(" "):
            self.error(555)
            return
        binarymime = False
        for token in filter(None, rest.split(" ")):
            code = None
            if token == "SIZE=99999999":
                limit = config.max_message_size
                code = 552 if limit is not None and limit < 99999999 else None
            elif token == "BODY=BINARYMIME":
                binarymime = True
                code = None if config.chunking and config.binarymime else 555
            elif token == "FOO=BAR":
                code = 555
            elif token not in ("SIZE=100", "BODY=8BITMIME"):
                raise ModelGap(f"MAIL parameter {token!r}")
            if code is not None:
                self.error(code)
                return
        if self.decide("MailCommand", accept=250):
            self.has_sender, self.binarymime = True, binarymime

    def cmd_rcpt(self, verb: str, argument: str) -> None:
        config = self.config
        if self.hello is None or not self.has_sender or self.body_method is not None:
            self.error(503)
            return
        rest = None
        if argument[:3].upper() == "TO:":
            rest = self.path(argument[3:].lstrip(" "), sender=False)
        if rest is None:
            self.error(501)
            return
        if self.hello == "HELO" and rest.strip(" "):
            self.error(555)
            return
        for token in filter(None, rest.split(" ")):
            if token == "FOO=BAR" or (token == "NOTIFY=NEVER" and not config.dsn):
                self.error(555)
                return
            if token != "NOTIFY=NEVER":
                raise ModelGap(f"RCPT parameter {token!r}")
        if self.recipients >= config.max_recipients:
            self.reply(452)  # RFC 5321 4.5.3.1.10; not a client error
        elif self.decide("RcptCommand", accept=250):
            self.recipients += 1

    def cmd_data(self, verb: str, argument: str) -> None:
        code = self.body_start_error()
        if code is None and argument:
            code = 501
        if code is None and self.binarymime:
            code = 503  # BODY=BINARYMIME needs BDAT
        if code is not None:
            self.error(code)
        elif self.decide("BodyStart", accept=354):
            self.mode, self.body_method, self.message_open = "data", "DATA", True

    def cmd_bdat(self, verb: str, argument: str) -> None:
        config = self.config
        match = _BDAT_ARGUMENT.fullmatch(argument)
        if match is None:
            self.error(501)  # the size is unknown: no chunk is read
            return
        size, last = int(match[1]), match[2] is not None
        if not config.chunking:
            self.discard(size, 502, counted=True)
            return
        if self.body_method != "BDAT":
            code = self.body_start_error()
            if code is not None:
                self.discard(size, code, counted=True)
                return
        limit = config.max_message_size
        if limit is not None and sum(map(len, self.chunks)) + size > limit:
            if self.message_open:
                self.kinds.append("MessageAborted")
                self.message_open = False
            self.discard(size, 552, counted=False, fails=True, last=last)
            return
        self.chunk_size, self.chunk_last = size, last
        if self.body_method is None:
            self.kinds.append("BodyStart")
            verdict = self.policy.verdict("BodyStart")
            if verdict == 421:
                self.reply(421)
                self.close()
                return
            if verdict is not None:
                # RFC 3030 2: the refused chunk is read and dropped, then the refusal.
                self.discard(size, verdict, counted=False, fails=True)
                return
            self.body_method, self.message_open = "BDAT", True
        self.mode, self.chunk_refusal = "bdat", None

    def discard(self, size: int, code: int, *, counted: bool, fails: bool = False,
                last: bool = False) -> None:
        self.mode, self.chunk_size, self.chunk_refusal = "bdat", size, (code, counted, fails)
        self.refused_last = last  # (the message's end: its refusal, below)

    def cmd_rset(self, verb: str, argument: str) -> None:
        if argument:
            self.error(501)
        else:
            self.reset()
            self.reply(250)

    def cmd_noop(self, verb: str, argument: str) -> None:
        self.reply(250)

    def cmd_quit(self, verb: str, argument: str) -> None:
        if argument:
            self.error(501)
        else:
            self.reply(221)
            self.close()

    def cmd_help(self, verb: str, argument: str) -> None:
        self.reply(214)

    def cmd_vrfy(self, verb: str, argument: str) -> None:
        if argument:
            self.reply(252)
        else:
            self.error(501)

    def cmd_expn(self, verb: str, argument: str) -> None:
        self.error(502)

    def cmd_starttls(self, verb: str, argument: str) -> None:
        if not self.config.tls_available:
            self.error(502)
        elif self.tls_active or self.hello is None:
            self.error(503)
        elif argument:
            self.error(501)
        else:
            self.reply(220)
            self.reset()
            self.kinds.append("StartTLS")
            # The driver completes the handshake at once: RFC 3207 4.2, start over, with
            # no hello and no identity from before TLS.
            self.mode, self.hello, self.tls_active = "tls", None, True
            self.authenticated = False

    def cmd_auth(self, verb: str, argument: str) -> None:
        config = self.config
        mechanism, _, initial = argument.partition(" ")
        if self.hello is None:
            self.error(503)
        elif not config.auth_mechanisms:
            self.error(502)
        elif config.auth_requires_tls and not self.tls_active:
            self.error(538)
        elif self.authenticated or self.has_sender:
            self.error(503)
        elif not mechanism or " " in initial:
            self.error(501)
        elif mechanism.upper() not in config.auth_mechanisms:
            self.error(504)
        elif initial not in ("", "=") and not _is_base64(initial):
            self.error(501)
        else:
            self.auth_step("AuthStart")

    def auth_line(self, raw: bytes) -> None:
        self.mode = "command"
        if len(raw) > self.config.max_auth_line_length:
            self.error(500)
            return
        line = raw.rstrip(b"\r\n")
        try:
            valid = line != b"*" and _is_base64(line.decode("ascii"))
        except UnicodeDecodeError:
            valid = False
        if valid:
            self.auth_step("AuthResponse")
        else:
            self.error(501)  # "*" cancels; anything else is bad base64

    def auth_step(self, kind: str) -> None:
        self.kinds.append(kind)
        action = self.policy.auth_action()
        if action == "challenge":
            self.reply(334)
            self.mode = "auth"
        elif action == "success":
            self.reply(235)
            self.authenticated = True
        else:
            self.auth_failures += 1
            if self.auth_failures > self.config.max_auth_failures:
                self.reply(421)
                self.close()
            else:
                self.reply(535 if action == "failure" else 454)

    # -- message bodies

    def end_of_data(self, body: bytes) -> None:
        """The body as sent, up to and including the CRLF before the final "."."""
        config = self.config
        self.mode = "command"
        unstuffed = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
        crlf = body.count(b"\r\n")
        bare = config.bare_line_endings == "reject" and (
            body.count(b"\r") != crlf or body.count(b"\n") != crlf)
        # (A line's stuffed dot does not count: RFC 5321 4.5.3.1.6.)
        too_long = any(len(line) >= config.max_data_line_length
                       for line in unstuffed.split(b"\n"))
        limit = config.max_message_size
        too_big = limit is not None and len(unstuffed) > limit
        if not (bare or too_long or too_big):
            self.end_of_message(unstuffed)
            return
        # Which refusal is given first depends on where the reads were split.
        self.refuse_message(*({550} if bare or too_long else set())
                            | ({552} if too_big else set()))
        self.kinds.append("MessageAborted")

    def refuse_message(self, *codes: int) -> None:
        """A message refused after its end: one reply per recipient for LMTP (RFC 2033
        4.2), whoever refused it."""
        for _ in range(self.recipients if self.config.lmtp else 1):
            self.reply(*codes)
        self.clear()

    def end_of_chunk(self, chunk: bytes) -> None:
        self.mode = "command"
        refusal, self.chunk_refusal = self.chunk_refusal, None
        if refusal is not None:
            code, counted, fails = refusal
            if fails and self.refused_last:
                self.refuse_message(code)
                return
            if fails:
                self.clear()  # RFC 3030 2: a refused chunk fails the transaction
            if counted:
                self.error(code)
            else:
                self.reply(code)
            return
        self.chunks.append(chunk)
        if self.chunk_last:
            self.end_of_message(b"".join(self.chunks))
        else:
            self.reply(250)

    def end_of_message(self, body: bytes) -> None:
        self.messages.append(body)
        if self.config.lmtp:
            self.kinds.append("EndOfMessage")
            for _ in range(self.recipients):  # RFC 2033 4.2
                verdict = self.policy.lmtp_verdict()
                self.reply(250 if verdict is None else verdict)
        else:
            self.decide("EndOfMessage", accept=250)
        self.clear()


def agree(driver: Driver, *, close_at: int | None = None) -> None:
    """The engine said and did exactly what the model predicts for the same bytes."""
    model = Model(driver.config, driver.policy.choices, tls_active=driver.tls_active)
    expected = model.run(driver.reads, eof=driver.eof, close_at=close_at)
    codes = reply_codes(bytes(driver.out))
    # Where the model allows several codes, take the one given if it is allowed.
    predicted = [code if code in allowed else min(allowed)
                 for code, allowed in zip(codes, expected.replies, strict=False)]
    predicted += [min(allowed) for allowed in expected.replies[len(codes):]]
    assert codes == predicted
    assert driver.kinds == expected.kinds
    assert driver.messages == expected.messages


# ----------------------------------------------------------------------- the vocabulary

_EOL = st.sampled_from([b"\r\n"] * 5 + [b"\n"])
_COMMANDS = [
    b"EHLO client.example", b"HELO client.example", b"LHLO client.example",
    b"ehlo client.example", b"lhlo x", b"EHLO", b"HELO  ",
    b"MAIL FROM:<a@example.org>", b"MAIL FROM:<>", b"mail from: <a@example.org>",
    b"MAIL FROM:<a@example.org> SIZE=100", b"MAIL FROM:<a@example.org> SIZE=99999999",
    b"MAIL FROM:<a@example.org> BODY=BINARYMIME", b"MAIL FROM:<a@example.org> BODY=8BITMIME",
    b"MAIL FROM:<a@example.org> FOO=BAR", b"MAIL FROM:a@example.org", b"MAIL TO:<a@example.org>",
    b"MAIL", b"MAIL FROM:<a@example.org>x",
    b"RCPT TO:<b@example.net>", b"RCPT TO:<c@example.net>", b"rcpt to:<Postmaster>",
    b"RCPT TO:<>", b"RCPT TO:b@example.net", b"RCPT TO:<b@example.net> NOTIFY=NEVER",
    b"RCPT TO:<b@example.net> FOO=BAR", b"RCPT FROM:<b@example.net>",
    b"DATA x", b"RSET", b"RSET x", b"NOOP", b"noop x", b"HELP", b"VRFY b", b"VRFY",
    b"EXPN list", b"QUIT", b"QUIT x", b"STARTTLS", b"STARTTLS x",
    b"AUTH PLAIN", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH PLAIN =", b"AUTH plain !!!",
    b"AUTH LOGIN", b"AUTH", b"AUTH PLAIN a b",
    b"BOGUS", b"", b"NOOP \x01", b"NOOP x\ty", b"\xff\xfe", b"NOOP\r", b" NOOP",
    b"BDAT", b"BDAT x", b"BDAT 5 FIRST",
]
# Lines of 1 octet less, equal or more than the command line limits (512 or 520 octets,
# plus 0 or 40 more for MAIL and RCPT), counting CRLF.
_LONG = [head + b" " * (size - len(head) - 2)
         for heads, sizes in [((b"NOOP", b"VRFY x"), (511, 512, 513, 519, 520, 521)),
                              ((b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>"),
                               (513, 551, 552, 553, 560, 561))]
         for head in heads for size in sizes]
COMMAND = st.builds(bytes.__add__, st.sampled_from(_COMMANDS + _LONG), _EOL)

_BODY_LINES = st.sampled_from([
    b"x", b"zz z", b"..", b"..x", b".x", b".", b"", b". ", b"x\nz", b"x\rz", b"\rx",
    b"x" * 998, b"x" * 999, b"y" * 700,
])
DATA = st.builds(
    lambda verb, eol, lines, end: verb + eol + b"".join(line + b"\r\n" for line in lines) + end,
    st.sampled_from([b"DATA", b"data"]), _EOL, st.lists(_BODY_LINES, max_size=6),
    st.sampled_from([b".\r\n"] * 5 + [b".\n", b""]),
)
# Octets that can never make a command verb (no letters of any verb).
JUNK = st.lists(
    st.sampled_from([b"x", b"z", b" ", b".", b"\r", b"\n", b"\r\n", b"\x00", b"\xff",
                     b"\r\n.\r\n"]),
    max_size=12,
).map(b"".join)


@st.composite
def bdat(draw: st.DrawFn) -> bytes:
    """A BDAT command and its chunk; the size given is sometimes wrong."""
    payload = draw(st.one_of(*[JUNK] * 5, st.integers(1900, 2100).map(b"x".__mul__)))
    size = max(0, len(payload) + draw(st.sampled_from([0, 0, 0, 0, 0, -1, 2, -5])))
    verb = draw(st.sampled_from([b"BDAT", b"bdat"]))
    last = draw(st.sampled_from([b"", b" LAST", b" last", b"  LAST "]))
    return verb + b" %d" % size + last + draw(_EOL) + payload


AUTH_RESPONSE = st.builds(
    bytes.__add__,
    st.sampled_from([b"dXNlcg==", b"AGFsaWNlAHNlY3JldA==", b"*", b"!!", b"", b"\xff",
                     b"A" * 1204, b"A" * 1196]),  # the limit is 1200 octets
    _EOL,
)


def hello(config: ProtocolConfig) -> st.SearchStrategy[bytes]:
    verbs = [b"LHLO"] if config.lmtp else [b"EHLO", b"EHLO", b"EHLO", b"HELO"]
    return st.sampled_from([verb + b" client.example\r\n" for verb in verbs])


def envelope(config: ProtocolConfig) -> st.SearchStrategy[bytes]:
    """A mostly well-formed start of a transaction (the usual way into DATA and BDAT)."""
    mail = st.sampled_from([b"MAIL FROM:<a@example.org>\r\n"] * 4 + [
        b"MAIL FROM:<>\r\n", b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n",
        b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n"])
    rcpts = st.sampled_from([1, 1, 1, 2, 3, 0]).map(lambda n: b"".join(
        b"RCPT TO:<%s@example.net>\r\n" % name for name in [b"b", b"c", b"d"][:n]))
    return st.builds(lambda *parts: b"".join(parts), hello(config), mail, rcpts)


def steps(config: ProtocolConfig) -> st.SearchStrategy[bytes]:
    """One protocol step of a client talking to a server with this config."""
    auth = st.builds(lambda head, responses: head + b"AUTH PLAIN\r\n" + b"".join(responses),
                     hello(config), st.lists(AUTH_RESPONSE, max_size=2))
    # What follows STARTTLS in the same read is plaintext that must be thrown away.
    starttls = st.builds(lambda head, injected: head + b"STARTTLS\r\n" + injected,
                         hello(config),
                         st.sampled_from([b"", b"MAIL FROM:<a@example.org>\r\n", b"NOOP\r\n"]))
    # Usually a session or a transaction is started first, so that most commands and
    # bodies are not just out of sequence.
    start = st.one_of(envelope(config), envelope(config), envelope(config), st.just(b""))
    command = st.builds(bytes.__add__, st.one_of(start, hello(config)), COMMAND)
    data = st.builds(bytes.__add__, start, DATA)
    chunks = st.builds(lambda head, tail: head + b"".join(tail), start,
                       st.lists(bdat(), min_size=1, max_size=3))
    step = st.one_of(command, command, command, data, data, chunks, chunks, auth, starttls,
                     AUTH_RESPONSE, JUNK)
    return st.lists(step, min_size=1, max_size=4).map(b"".join)


def _bare(keep: bool) -> Literal["reject", "keep"]:
    return "keep" if keep else "reject"


@st.composite
def configs(draw: st.DrawFn) -> ProtocolConfig:
    maybe = st.sampled_from([True, True, False])
    return ProtocolConfig(
        lmtp=draw(st.booleans()),
        chunking=draw(maybe),
        tls_available=draw(maybe),
        auth_mechanisms=draw(st.sampled_from([("PLAIN",), ("PLAIN",), ()])),
        auth_requires_tls=draw(st.booleans()),
        require_tls=draw(st.sampled_from([False] * 7 + [True])),
        require_auth=draw(st.sampled_from([False] * 7 + [True])),
        bare_line_endings=_bare(draw(st.booleans())),
        max_command_line_length=draw(st.sampled_from([512, 520])),
        command_line_allowance=draw(st.sampled_from([0, 40])),
        max_data_line_length=1000,
        max_auth_line_length=1200,
        max_message_size=2000,
        max_recipients=draw(st.integers(1, 3)),
        max_bad_commands=draw(st.sampled_from([3, 100, 100, 100, 100])),
        max_auth_failures=draw(st.integers(0, 2)),
    )


CUTS = st.lists(st.integers(1, 64), max_size=8)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut into reads of the given sizes (the rest is the last read)."""
    pieces, pos = [], 0
    for size in cuts:
        if pos >= len(data):
            break
        pieces.append(data[pos:pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


# ----------------------------------------------------------------------- modelled sessions


class SessionMachine(RuleBasedStateMachine):
    """A client sending protocol steps, pipelined or one by one, in random reads."""

    driver: Driver
    pending: bytes  # pipelined, not sent yet
    steps: int
    close_at: int | None  # close_with() was called after this many reads

    @initialize(config=configs(), choices=CHOICES, tls_active=st.booleans())
    def start(self, config: ProtocolConfig, choices: list[int], tls_active: bool) -> None:
        self.driver = Driver(config, Policy(choices), tls_active)
        self.pending = b""
        self.steps = 0
        self.close_at = None

    def send(self, data: bytes, pipeline: bool, cuts: list[int]) -> None:
        self.steps += 1
        self.pending += data
        if not pipeline:
            self.flush(cuts)

    @precondition(lambda self: not self.driver.eof)
    @rule(cuts=CUTS)
    def flush(self, cuts: list[int]) -> None:
        data, self.pending = self.pending, b""
        for piece in split(data, cuts):
            self.driver.feed(piece)

    @precondition(lambda self: not self.driver.eof)
    @rule(data=st.data(), pipeline=st.booleans(), cuts=CUTS)
    def step(self, data: st.DataObject, pipeline: bool, cuts: list[int]) -> None:
        self.send(data.draw(steps(self.driver.config)), pipeline, cuts)

    @precondition(lambda self: not self.driver.eof and self.steps >= 4)
    @rule(how=st.sampled_from(["eof", "timeout"]), cuts=CUTS)
    def finish(self, how: str, cuts: list[int]) -> None:
        """The client closes its side, or the server layer gives up: close_with(421)."""
        if how == "eof":
            self.flush(cuts)
            self.driver.send_eof()
        elif self.close_at is None:
            self.close_at = len(self.driver.reads)
            self.driver.close_with()

    @precondition(lambda self: self.driver.eof)
    @rule()
    def after_the_end(self) -> None:
        """Once closed, the engine stays silent: no events, no replies, close_with is moot."""
        assert self.driver.closed
        self.driver.close_with()  # the Driver fails on any event or reply byte

    @invariant()
    def agrees_with_the_model(self) -> None:
        agree(self.driver, close_at=self.close_at)


SessionMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None
)
TestSessions = SessionMachine.TestCase


@st.composite
def sessions(draw: st.DrawFn) -> tuple[ProtocolConfig, list[int], bool, list[bytes], bool]:
    """A whole session at once: config, choices, TLS at start, the reads, EOF at the end."""
    config = draw(configs())
    session = draw(st.lists(steps(config), min_size=1, max_size=12))
    how = draw(st.sampled_from(["step by step", "all at once", "random"]))
    if how == "step by step":
        reads = [step for step in session if step]
    elif how == "all at once":
        reads = [b"".join(session)] if any(session) else []
    else:
        reads = split(b"".join(session), draw(st.lists(st.integers(1, 300), max_size=30)))
    return config, draw(CHOICES), draw(st.booleans()), reads, draw(st.booleans())


@settings(max_examples=250, deadline=None)
@given(sessions())
def test_sessions_agree_with_the_model(
        session: tuple[ProtocolConfig, list[int], bool, list[bytes], bool]) -> None:
    config, choices, tls_active, reads, eof = session
    driver = Driver(config, Policy(choices), tls_active)
    for read in reads:
        driver.feed(read)
    if eof:
        driver.send_eof()
    agree(driver)


@settings(max_examples=300, deadline=None)
@given(st.data(), configs(), CHOICES, st.booleans(), st.booleans())
def test_commands_agree_with_the_model(data: st.DataObject, config: ProtocolConfig,
                                       choices: list[int], tls_active: bool,
                                       pipelined: bool) -> None:
    """Each command of the vocabulary, in the states the usual steps lead to."""
    in_auth = st.builds(bytes.__add__, hello(config), st.just(b"AUTH PLAIN\r\n"))
    in_bdat = st.builds(bytes.__add__, envelope(config), st.just(b"BDAT 2\r\nxy"))
    prefix = data.draw(st.one_of(st.just(b""), hello(config), envelope(config), in_auth,
                                 in_bdat, steps(config)))
    lines = data.draw(st.lists(COMMAND, min_size=1, max_size=6))
    driver = Driver(config, Policy(choices), tls_active)
    for read in [prefix + b"".join(lines)] if pipelined else [prefix, *lines]:
        if read:
            driver.feed(read)
    agree(driver)


def test_the_model_can_fail() -> None:
    """The oracle is not vacuous: a reply too many or too few is noticed."""
    driver = Driver(ProtocolConfig(), Policy([]))
    driver.feed(b"EHLO c\r\nNOOP\r\n")
    agree(driver)
    driver.out += b"250 OK\r\n"
    with pytest.raises(AssertionError):
        agree(driver)


# ----------------------------------------------------------------------- arbitrary bytes

_NASTY = st.sampled_from([
    b"\r\n", b"\n", b"\r", b".", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b".\r\n",
    b"EHLO x\r\n", b"LHLO x\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<d@e.f>\r\n",
    b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 1999\r\n", b"RSET\r\n",
    b"AUTH PLAIN\r\n", b"AUTH PLAIN =\r\n", b"*\r\n", b"STARTTLS\r\n", b"QUIT\r\n",
    b"\x00", b"\xff", b"A" * 600, b"x" * 1100, b"B" * 13000,
])


@settings(max_examples=300, deadline=None)
@given(
    configs(), CHOICES, st.booleans(),
    st.lists(st.one_of(st.binary(min_size=1, max_size=80), _NASTY), max_size=40),
    st.booleans(),
)
def test_arbitrary_bytes_keep_the_invariants(
        config: ProtocolConfig, choices: list[int], tls_active: bool, reads: list[bytes],
        eof: bool) -> None:
    # The Driver checks, after every call: no exception, bounded buffer, no body data
    # outside an accepted message with recipients, nothing after ConnectionClosed.
    driver = Driver(config, Policy(choices), tls_active)
    for read in reads:
        driver.feed(read)
    if eof:
        driver.send_eof()
        assert driver.closed
    codes = reply_codes(bytes(driver.out))
    assert codes, "not even a greeting"
    if driver.closed:
        assert driver.kinds[-1] == "ConnectionClosed"
        assert driver.kinds.count("ConnectionClosed") == 1


# ----------------------------------------------------------------------- limits

SMALL = ProtocolConfig(max_command_line_length=512, command_line_allowance=0,
                       max_data_line_length=1000, max_message_size=2000)
ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 for a message whose lines all end in CRLF."""
    lines = message.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines)


def bdat_chunks(chunks: Sequence[bytes]) -> bytes:
    """BDAT commands for these chunks, the last one with LAST."""
    wire = b"".join(b"BDAT %d\r\n" % len(chunk) + chunk for chunk in chunks[:-1])
    return wire + b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 996)), min_size=1, max_size=4),
    st.booleans(), st.lists(st.integers(1, 1500), max_size=6), CUTS,
)
def test_message_size_limit(lines: list[tuple[bool, int]], use_bdat: bool,
                            chunk_sizes: list[int], cuts: list[int]) -> None:
    message = b"".join(b"." * dot + b"y" * n + b"\r\n" for dot, n in lines)
    if use_bdat:
        wire = ENVELOPE + bdat_chunks(split(message, chunk_sizes) or [b""])
    else:
        wire = ENVELOPE + b"DATA\r\n" + dot_stuff(message) + b".\r\n"
    driver = Driver(SMALL, Policy([]))
    for read in split(wire, [*cuts, 400] * 20):
        driver.feed(read)
    agree(driver)
    codes = reply_codes(bytes(driver.out))
    if len(message) <= 2000:
        assert driver.messages == [message]
        assert codes[-1] == 250
    else:
        # The Driver already checked that no more than 2000 octets were handed up.
        assert driver.messages == []
        assert 552 in codes


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["command", "auth", "data"]), st.integers(1, 3),
       st.lists(st.integers(1, 5000), min_size=1, max_size=6))
def test_buffer_bounded_by_the_line_limits(mode: str, lines: int,
                                           sizes: list[int]) -> None:
    """Endless lines, in reads of any size, never pile up beyond one line limit."""
    config = ProtocolConfig(max_command_line_length=512, command_line_allowance=0,
                            max_data_line_length=1000, max_auth_line_length=1200,
                            auth_mechanisms=("PLAIN",), auth_requires_tls=False,
                            max_bad_commands=1000)
    driver = Driver(config, Policy([0]))  # accept; AUTH: challenge, challenge...
    if mode == "auth":
        driver.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
        assert driver.conn.mode is Mode.AUTH
    elif mode == "data":
        driver.feed(ENVELOPE + b"DATA\r\n")
        assert driver.conn.mode is Mode.DATA
    for _ in range(lines):
        for size in sizes:
            driver.feed(b"A" * size)  # check_buffer runs after every step
        driver.feed(b"\r\n")
    assert driver.conn.buffered == 0
    reply_codes(bytes(driver.out))
    agree(driver)


# ----------------------------------------------------------------------- dot-stuffing

_LINE = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b".", b"..", b".x", b"", b". ", b"....", b".\x00"]),
)
CRLF_MESSAGE = st.lists(_LINE, max_size=12).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines))


@settings(max_examples=200, deadline=None)
@given(CRLF_MESSAGE, CUTS, st.booleans())
def test_dot_stuffing_round_trip_through_data(message: bytes, cuts: list[int],
                                              keep_bare: bool) -> None:
    config = ProtocolConfig(bare_line_endings=_bare(keep_bare))
    driver = Driver(config, Policy([]))
    wire = ENVELOPE + b"DATA\r\n" + dot_stuff(message) + b".\r\nQUIT\r\n"
    for read in split(wire, cuts * 30):
        driver.feed(read)
    assert driver.messages == [message]
    assert reply_codes(bytes(driver.out)) == [220, 250, 250, 250, 354, 250, 221]
    assert driver.closed


@settings(max_examples=200, deadline=None)
@given(st.one_of(CRLF_MESSAGE, st.binary(max_size=300)),
       st.lists(st.integers(0, 120), max_size=5), CUTS)
def test_bdat_round_trip(message: bytes, chunk_sizes: list[int], cuts: list[int]) -> None:
    driver = Driver(ProtocolConfig(), Policy([]))
    chunks = split(message, chunk_sizes) or [b""]  # a size 0 makes an empty chunk
    wire = ENVELOPE + bdat_chunks(chunks) + b"QUIT\r\n"
    for read in split(wire, cuts * 30):
        driver.feed(read)
    assert driver.messages == [message]
    assert reply_codes(bytes(driver.out)) == [220, 250, 250, 250] + [250] * len(chunks) + [221]
