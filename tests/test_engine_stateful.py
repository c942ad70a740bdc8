"""Stateful property test (hypothesis.stateful) of the engine: a client model and the
engine stepped together, the invariants checked after every step."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import NEED_DATA, PAUSED, Mode, ServerConnection
from trio_smtpd._events import (
    BodyStart,
    ConnectionClosed,
    EndOfMessage,
    Event,
    MessageAborted,
    MessageData,
    Request,
)
from trio_smtpd._replies import Reply

CONFIG = ProtocolConfig(max_message_size=3000, max_recipients=4, max_bad_commands=10_000)
COMMANDS = [b"EHLO client", b"HELO client", b"MAIL FROM:<a@example.org>", b"MAIL FROM:<>",
            b"RCPT TO:<b@example.net>", b"RCPT TO:<postmaster>", b"RSET", b"NOOP", b"HELP",
            b"VRFY x", b"BOGUS", b"", b"RCPT TO:bad", b"DATA x", b"BDAT nope"]


class EngineMachine(RuleBasedStateMachine):
    @initialize(refuse=st.booleans())
    def start(self, refuse: bool) -> None:
        self.conn = ServerConnection(CONFIG)
        self.refuse_next = refuse
        self.replies = 0
        self.expected = 1  # the greeting
        self.closed = False
        self.in_message = False
        self.message_octets = 0
        self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:
                self.count_replies()
                continue
            assert isinstance(event, Event)
            assert not self.closed, f"{event} after the connection closed"
            if isinstance(event, MessageData):
                assert self.in_message and self.conn.recipients
                self.message_octets += len(event.data)
                assert self.message_octets <= (CONFIG.max_message_size or 0)
            if isinstance(event, EndOfMessage | MessageAborted):
                self.in_message, self.message_octets = False, 0
            if isinstance(event, Request):
                refuse, self.refuse_next = self.refuse_next, not self.refuse_next
                if refuse and not isinstance(event, BodyStart | EndOfMessage):
                    self.conn.respond(Reply(554 if self.conn.mode is Mode.GREETING else 450,
                                            "no", None))
                else:
                    self.conn.respond()
                    if isinstance(event, BodyStart):
                        self.in_message = True
            if isinstance(event, ConnectionClosed):
                self.closed = True
        self.count_replies()

    def count_replies(self) -> None:
        out = self.conn.data_to_send()
        self.replies += sum(1 for line in out.split(b"\r\n")[:-1] if line[3:4] != b"-")

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.conn.receive_data(data)
            self.pump()

    @rule(command=st.sampled_from(COMMANDS), refuse=st.booleans())
    def command(self, command: bytes, refuse: bool) -> None:
        self.refuse_next = refuse
        self.expected += 1
        self.send(command + b"\r\n")

    @rule(lines=st.lists(st.sampled_from([b"x", b".", b"..y", b"", b"z" * 300]), max_size=8))
    def data(self, lines: list[bytes]) -> None:
        self.expected += 1
        self.send(b"DATA\r\n")
        if self.conn.mode is Mode.DATA:
            self.expected += 1
            body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
            self.send(body + b".\r\n")

    @rule(payload=st.binary(max_size=50), last=st.booleans())
    def bdat(self, payload: bytes, last: bool) -> None:
        self.expected += 1
        self.send(b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload)

    @invariant()
    def one_reply_per_command(self) -> None:
        if not self.closed:
            assert self.replies == self.expected

    @invariant()
    def buffers_bounded(self) -> None:
        assert self.conn.buffered <= CONFIG.max_command_line_length + \
            CONFIG.command_line_allowance

    @invariant()
    def no_body_without_recipient(self) -> None:
        if self.conn.mode in (Mode.DATA, Mode.BDAT) and self.in_message:
            assert self.conn.recipients


EngineMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30,
                                           deadline=None)
TestEngineMachine = EngineMachine.TestCase
