"""Drive the sans-I/O engine in tests, transcript by transcript."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import NEED_DATA, PAUSED, ServerConnection
from trio_smtpd._events import (
    AuthResponse,
    AuthStart,
    ConnectionClosed,
    Event,
    MessageData,
    Request,
)

Decide = Callable[[ServerConnection, Request], None]


def accept_all(conn: ServerConnection, decision: Request) -> None:
    if isinstance(decision, AuthStart | AuthResponse):
        conn.auth_failure()
    else:
        conn.respond()


@dataclass
class Engine:
    """A ServerConnection plus everything it said and emitted."""

    config: ProtocolConfig = field(default_factory=ProtocolConfig)
    decide: Decide = accept_all
    tls_active: bool = False
    conn: ServerConnection = field(init=False)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.config, tls_active=self.tls_active)

    def start(self) -> bytes:
        """Greet; return the greeting."""
        return self.send(b"")

    def send(self, data: bytes, *, eof: bool = False) -> bytes:
        """Feed ``data`` (b"" just pumps), answer decisions, return the reply bytes."""
        if data:
            self.conn.receive_data(data)
        if eof:
            self.conn.receive_data(b"")
        replies = bytearray()
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:  # replies to take before it goes on
                replies += self.conn.data_to_send()
                continue
            assert isinstance(event, Event)
            self.events.append(event)
            if isinstance(event, Request):
                self.decide(self.conn, event)
            if isinstance(event, ConnectionClosed):
                break
        return bytes(replies + self.conn.data_to_send())

    def lines(self, data: bytes, **kw: bool) -> list[str]:
        return self.send(data, **kw).decode().splitlines()

    def codes(self, data: bytes, **kw: bool) -> list[int]:
        """The code of every final reply line (multi-line replies count once)."""
        return [int(line[:3]) for line in self.lines(data, **kw) if line[3:4] != "-"]

    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, MessageData))

    def of_type(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def ready(config: ProtocolConfig | None = None, decide: Decide = accept_all,
          hello: bytes = b"EHLO client.example\r\n", **kw: bool) -> Engine:
    engine = Engine(config or ProtocolConfig(), decide, **kw)
    engine.start()
    if hello:
        engine.send(hello)
    return engine
