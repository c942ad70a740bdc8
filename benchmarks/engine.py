"""What our own code costs, without sockets: the protocol engine alone, and a session
(engine plus decisions) over a transport that does no I/O.

    python benchmarks/engine.py [--messages 20000]

Prints microseconds per 1 KB message (MAIL, RCPT, DATA, body) and per whole session
(greeting, EHLO, one message, QUIT). Single-threaded and deterministic but for the
machine's speed: compare runs of two versions back to back.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import trio

import trio_smtpd
from trio_smtpd import Server, Session, SessionInfo
from trio_smtpd import _events as events
from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import NEED_DATA, PAUSED, ServerConnection
from trio_smtpd._transport import EOF, Outcome

BODY = b"".join(b"Line %d of the message body, some sixty octets of text here.\r\n" % n
                for n in range(16))
MESSAGE = [b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<sink@example.net>\r\n",
           b"DATA\r\n", BODY + b".\r\n"]


def engine_per_message(count: int) -> float:
    conn = ServerConnection(ProtocolConfig(hostname="bench.test"))

    def pump() -> None:
        while (event := conn.next_event()) is not NEED_DATA:
            if event is PAUSED:
                conn.data_to_send()
            elif isinstance(event, events.Request):
                conn.respond(None)

    pump()
    conn.receive_data(b"EHLO client.test\r\n")
    pump()
    conn.data_to_send()
    start = time.perf_counter()
    for _ in range(count):
        for chunk in MESSAGE:
            conn.receive_data(chunk)
            pump()
            conn.data_to_send()
    return (time.perf_counter() - start) / count * 1e6


class ScriptedTransport:
    """Hands out the client's lines one per read; sends go nowhere."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    async def receive(self, max_bytes: int, deadline: float,
                      expect_wait: bool = False) -> bytes | Outcome:
        return next(self._chunks, EOF)

    async def send(self, data: bytes | memoryview, deadline: float) -> bool:
        return True

    def send_nowait(self, data: bytes) -> bytes:
        return b""

    def wake(self) -> None:
        pass

    def stream(self) -> trio.abc.Stream:
        raise AssertionError("no TLS here")

    async def aclose(self) -> None:
        pass


async def accept_all(session: Session) -> None:
    async for decision in session:
        decision.accept()


def new_session(server: Server, chunks: list[bytes], number: int) -> Session:
    info = SessionInfo(id=f"bench.{number}", peer=("127.0.0.1", 40000),
                       local=("127.0.0.1", 25), lmtp=False, started=datetime.now(UTC))
    return server._new_session(ScriptedTransport(chunks), b"", info)


async def run(session: Session) -> None:
    """As the server runs a session: the handler in the application's cancel scope."""
    with trio.CancelScope() as scope:
        session._app.scope = scope
        await accept_all(session)
    await session._after_handler(scope)


async def session_per_message(count: int) -> float:
    server = Server(trio_smtpd.Config(hostname="bench.test"), None)
    session = new_session(server, [b"EHLO client.test\r\n", *MESSAGE * count, b"QUIT\r\n"], 0)
    start = time.perf_counter()
    await run(session)
    return (time.perf_counter() - start) / count * 1e6


async def whole_sessions(count: int) -> float:
    server = Server(trio_smtpd.Config(hostname="bench.test"), None)
    script = [b"EHLO client.test\r\n", *MESSAGE, b"QUIT\r\n"]
    start = time.perf_counter()
    for number in range(count):
        await run(new_session(server, script, number))
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    count = args.messages
    print(f"engine alone:              {engine_per_message(count):6.1f} us per message")
    print(f"session, no I/O:           {trio.run(session_per_message, count):6.1f} us "
          "per message")
    print(f"whole session, no I/O:     {trio.run(whole_sessions, count // 4):6.1f} us "
          "per connection")


if __name__ == "__main__":
    main()
