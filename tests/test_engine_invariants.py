"""Property tests of the engine's invariants over modelled command sequences.

(Arbitrary bytes, dot-stuffing round trips and a full reference model are in
test_engine_properties.py; this simpler counting model is the one that found the
refused-BDAT bug, and it stays as a second, independent oracle.)

* no exception escapes, whatever the client sends and however the application answers;
* every complete command line gets exactly one reply (LMTP: one per accepted recipient
  after the data), predicted by a small model of the protocol;
* buffers stay bounded by the limits;
* no state the RFC forbids: no message data without an accepted recipient, nothing at all
  after the connection closed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import NEED_DATA, PAUSED, Mode, ServerConnection
from trio_smtpd._events import (
    AuthResponse,
    AuthStart,
    BodyStart,
    ConnectionClosed,
    EndOfMessage,
    Event,
    MessageAborted,
    MessageData,
    Request,
)
from trio_smtpd._replies import Reply

SMALL = ProtocolConfig(max_command_line_length=512, command_line_allowance=0,
                       max_data_line_length=1000, max_message_size=2000, max_recipients=5,
                       max_bad_commands=1000, auth_mechanisms=("PLAIN",),
                       auth_requires_tls=False, tls_available=True)


@dataclass
class Driver:
    """Pumps an engine with random application answers, checking invariants each step."""

    config: ProtocolConfig
    rng: random.Random
    conn: ServerConnection = field(init=False)
    out: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    body_size: int = 0
    receiving: bool = False

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.config)
        self.pump()

    def feed(self, data: bytes) -> None:
        if self.conn.closed or self.conn.mode is Mode.TLS_HANDSHAKE:
            return
        self.conn.receive_data(data)
        self.pump()
        limit = max(self.config.max_command_line_length + self.config.command_line_allowance,
                    self.config.max_auth_line_length, self.config.max_data_line_length)
        assert self.conn.buffered <= limit + len(data)

    def pump(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:
                self.out += conn.data_to_send()
                continue
            assert isinstance(event, Event)
            self.check(event)
            self.events.append(event)
            if isinstance(event, Request):
                self.answer(event)
            if isinstance(event, ConnectionClosed):
                break
        self.out += conn.data_to_send()

    def check(self, event: Event) -> None:
        conn = self.conn
        assert not any(isinstance(e, ConnectionClosed) for e in self.events), event
        if isinstance(event, BodyStart):
            assert conn.recipients, "DATA/BDAT accepted for decision without recipients"
        if isinstance(event, MessageData):
            assert self.receiving and conn.recipients
            self.body_size += len(event.data)
            limit = self.config.max_message_size
            assert limit is None or self.body_size <= limit
        if isinstance(event, EndOfMessage | MessageAborted):
            self.receiving = False
            self.body_size = 0
        if conn.mode in (Mode.DATA, Mode.BDAT) and self.receiving:
            assert conn.recipients

    def answer(self, decision: Request) -> None:
        conn, rng = self.conn, self.rng
        if isinstance(decision, AuthStart | AuthResponse):
            choice = rng.randrange(3)
            if choice == 0:
                conn.auth_challenge(b"more")
            elif choice == 1:
                conn.auth_success("user")
            else:
                conn.auth_failure()
            return
        refuse = rng.random() < 0.2
        if isinstance(decision, EndOfMessage) and self.config.lmtp:
            conn.respond_per_recipient([
                Reply(550, "no", "5.0.0") if rng.random() < 0.3 else None
                for _ in conn.recipients])
        elif refuse and not isinstance(decision, type(None)):
            code = rng.choice([451, 550]) if not _is_connect(decision) else 554
            conn.respond(Reply(code, "refused", f"{code // 100}.0.0"))
        else:
            conn.respond()
        if isinstance(decision, BodyStart) and conn.mode in (Mode.DATA, Mode.BDAT):
            self.receiving = not refuse

    def replies(self) -> list[int]:
        lines = bytes(self.out).split(b"\r\n")
        assert lines[-1] == b""
        codes = []
        for line in lines[:-1]:
            assert len(line) >= 3 and line[:3].isdigit(), line
            assert line[3:4] in (b" ", b"-", b""), line
            if line[3:4] != b"-":
                codes.append(int(line[:3]))
        return codes


def _is_connect(decision: Request) -> bool:
    return type(decision).__name__ == "ConnectionOpened"


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, start = [], 0
    while start < len(data):
        end = start + rng.randint(1, 64)
        pieces.append(data[start:end])
        start = end
    return pieces


# ----------------------------------------------------------------------- modelled sequences


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A session as (kind, bytes) steps a simple model can count replies for."""
    body = st.lists(st.sampled_from([b"text", b".dot", b"..", b"", b"x" * 90]),
                    max_size=6).map(lambda lines: b"".join(line + b"\r\n" for line in lines))
    commands = st.sampled_from([
        b"EHLO client", b"HELO client", b"MAIL FROM:<a@example.org>", b"MAIL FROM:<>",
        b"RCPT TO:<b@example.net>", b"RCPT TO:<postmaster>", b"RSET", b"NOOP",
        b"VRFY x", b"EXPN x", b"HELP", b"BOGUS", b"", b"MAIL FROM:bad", b"RCPT TO:<>",
        b"MAIL FROM:<a@example.org> SIZE=99999", b"DATA extra",
    ])
    result: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["command"] * 6 + ["data", "bdat"]))
        if kind == "command":
            result.append(("command", draw(commands) + b"\r\n"))
        elif kind == "data":
            result.append(("data", draw(body)))
        else:
            payload = draw(st.binary(max_size=40))
            result.append(("bdat", payload))
    return result


@settings(max_examples=300, deadline=None)
@given(steps(), st.integers(0, 2**32), st.booleans())
def test_one_reply_per_command(session: list[tuple[str, bytes]], seed: int,
                               pipelined: bool) -> None:
    rng = random.Random(seed)
    driver = Driver(SMALL, rng)
    expected = 1  # the greeting
    group = b""  # a pipelined group; RFC 2920 ends one at DATA
    for kind, data in session:
        if kind == "command":
            chunk = data
        elif kind == "data":
            chunk = b"DATA\r\n"
        else:
            chunk = b"BDAT %d LAST\r\n" % len(data) + data
        expected += 1
        if pipelined:
            group += chunk
        else:
            for piece in splits(chunk, rng):
                driver.feed(piece)
        if kind == "data":
            driver.feed(group)
            group = b""
            if driver.conn.mode is Mode.DATA:
                # The 354 came; the body and its end get exactly one more reply.
                for piece in splits(data + b".\r\n", rng):
                    driver.feed(piece)
                expected += 1
        if driver.conn.closed:
            break
    driver.feed(group)
    if not driver.conn.closed:
        assert len(driver.replies()) == expected
    driver.feed(b"QUIT\r\n")
    if not driver.conn.closed:
        raise AssertionError("QUIT did not close the session")
