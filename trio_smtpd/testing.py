"""Test your application's decisions without sockets.

``open_client()`` runs a real ``serve()`` on an in-memory listener and gives you a scripted
client for it::

    async def test_unknown_user_is_refused():
        async with open_client(Config(hostname="mx.test"), handler=my_handler) as client:
            await client.command("EHLO test")
            await client.command("MAIL FROM:<a@example.org>")
            reply = await client.command("RCPT TO:<nobody@mx.test>")
            assert reply.code == 550
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio
import trio.testing

from ._server import Handler, Server, serve
from ._settings import Config

__all__ = ["ClientReply", "MemoryListener", "TestClient", "open_client"]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs made by ``connect()``."""

    def __init__(self, *, lockstep: bool = False) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](0)
        # Lockstep streams have no buffer: a send waits until the other side reads,
        # which is how a client that never reads looks to the server.
        self._pair = (trio.testing.lockstep_stream_pair if lockstep
                      else trio.testing.memory_stream_pair)

    async def connect(self) -> trio.abc.Stream:
        """A new connection to the server; returns the client's end."""
        client, server = self._pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        """The server's end of the next connection."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        """Stop: ``accept()`` raises ``trio.ClosedResourceError`` from now on."""
        await self._send.aclose()
        await self._receive.aclose()


@dataclass(frozen=True)
class ClientReply:
    """A reply as the client read it: its code and its lines (enhanced code included)."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self.lines)


class TestClient:
    """A minimal scripted SMTP client over any stream."""

    __test__ = False  # not a pytest test class

    def __init__(self, stream: trio.abc.Stream, server: Server | None = None) -> None:
        #: The connection to the server.
        self.stream = stream
        #: The server, when ``open_client()`` made it.
        self.server = server
        #: The greeting, once read (``open_client()`` reads it).
        self.greeting: ClientReply | None = None
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        """Send raw bytes (pipelined commands, message data)."""
        await self.stream.send_all(data)

    async def reply(self) -> ClientReply:
        """Read one (possibly multi-line) reply."""
        lines: list[str] = []
        while True:
            line = await self._line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return ClientReply(int(line[:3]), lines)

    async def command(self, line: str) -> ClientReply:
        """Send one command line and read its reply."""
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def send_message(self, sender: str, recipients: list[str], data: bytes,
                           *, hello: str = "EHLO client.test") -> list[ClientReply]:
        """A whole transaction; returns the replies to HELLO, MAIL, each RCPT, DATA, end."""
        replies = [await self.command(hello)] if hello else []
        replies.append(await self.command(f"MAIL FROM:<{sender}>"))
        for recipient in recipients:
            replies.append(await self.command(f"RCPT TO:<{recipient}>"))
        replies.append(await self.command("DATA"))
        if replies[-1].code == 354:
            stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line
                                   for line in data.split(b"\r\n"))
            if not stuffed.endswith(b"\r\n"):
                stuffed += b"\r\n"
            await self.send(stuffed + b".\r\n")
            replies.append(await self.reply())
        return replies

    async def closed(self) -> bool:
        """True when the server has closed the connection (after any pending bytes)."""
        return await self.stream.receive_some(1) == b""

    async def aclose(self) -> None:
        """Close the connection."""
        await self.stream.aclose()

    async def _line(self) -> str:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line.decode("utf-8")
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed the connection")
            self._buffer += data


@asynccontextmanager
async def open_client(config: Config | None = None, handler: Handler | None = None,
                      *, greeting: bool = True) -> AsyncIterator[TestClient]:
    """Serve ``config`` in memory and connect one client (the greeting already read)."""
    config = config or Config(hostname="mx.test")
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config, handler=handler,
                                                     listeners=[listener]))
        client = TestClient(await listener.connect(), server)
        if greeting:
            client.greeting = await client.reply()
        try:
            yield client
        finally:
            server.shutdown()
            await client.aclose()
