"""Timeouts and shutdown over real TCP connections, where sessions drive the socket
directly (``SocketTransport``) and the watchdog wakes them with ``notify_closing``.

``test_server_timeouts.py`` covers the same over in-memory streams; both run on trio's
mock clock, which jumps ahead whenever every task (and so every socket) is waiting.
"""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio
import trio.testing

from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Message, Server, Session, Timeouts, serve
from trio_smtpd.testing import ClientReply, TestClient

# The whole file runs on both transports (see conftest.py).
pytestmark = pytest.mark.usefixtures("both_transports")


async def last_reply(client: TestClient) -> ClientReply:
    """Read replies until the server closes the connection; return the last one."""
    last = None
    while True:
        try:
            last = await client.reply()
        except (EOFError, trio.BrokenResourceError):
            assert last is not None
            return last


async def test_command_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server(Config(hostname="mx.test")) as server:
        client = await connect(server)
        assert (await client.command("EHLO c")).code == 250
        start = trio.current_time()
        reply = await last_reply(client)
        assert (reply.code, reply.lines) == (421, ["4.4.2 Timeout, closing connection"])
        assert 300 <= trio.current_time() - start < 301
        await client.aclose()
        assert server.connections == 0


async def test_trickled_line_times_out_from_its_start(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server(Config(hostname="mx.test")) as server:
        client = await connect(server)

        async def trickle() -> None:
            # A byte every 100 s: each read is quick, but the line never ends.
            try:
                while True:
                    await client.send(b"N")
                    await trio.sleep(100)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            reply = await last_reply(client)
            assert reply.code == 421
            assert 300 <= trio.current_time() - start < 301
            nursery.cancel_scope.cancel()
        await client.aclose()


async def test_data_block_timeout_drops_the_message(
        autojump_clock: trio.testing.MockClock) -> None:
    delivered: list[Message] = []

    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, Message):
                delivered.append(event)
            event.accept()

    config = Config(hostname="mx.test", timeouts=Timeouts(data_block=60))
    async with tcp_server(config, handler) as server:
        client = await connect(server)
        for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
            await client.command(line)
        await client.send(b"Subject: half a message\r\n")
        start = trio.current_time()
        reply = await last_reply(client)
        assert reply.code == 421 and reply.lines[0].startswith("4.4.2")
        assert 60 <= trio.current_time() - start < 61
        assert delivered == []
        await client.aclose()


async def test_session_cap(autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server(Config(hostname="mx.test", timeouts=Timeouts(session=1000))) as server:
        client = await connect(server)
        start = trio.current_time()
        while True:
            await trio.sleep(200)  # each command well inside the command timeout
            try:
                reply = await client.command("NOOP")
            except EOFError:
                break
            if reply.code != 250:
                break
        assert (reply.code, reply.lines) == (421, ["4.4.2 Session too long, closing connection"])
        assert 1000 <= trio.current_time() - start < 1001
        await client.aclose()


async def test_write_timeout_for_a_client_that_never_reads(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server(Config(hostname="mx.test")) as server:
        assert server.port is not None
        silent = socket.create_connection(("127.0.0.1", server.port))
        silent.setblocking(False)
        # Pipelined HELP commands whose replies are never read: the server's sends
        # block once both sides' buffers are full.
        sent = 0
        start = trio.current_time()
        with trio.move_on_after(10):
            while True:
                try:
                    sent += silent.send(b"HELP\r\n" * 1000)
                except BlockingIOError:
                    await trio.sleep(1)
        assert sent > 0
        while server.connections:
            await trio.sleep(1)
        assert 300 <= trio.current_time() - start < 320
        # Others are served meanwhile and afterwards.
        other = await connect(server)
        assert (await other.command("NOOP")).code == 250
        await other.aclose()
        silent.close()


async def test_shutdown_tells_idle_sessions_and_lets_busy_ones_finish(
        autojump_clock: trio.testing.MockClock) -> None:
    stored: list[bytes] = []

    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, Message):
                stored.append(event.transaction.data)
            event.accept()

    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(
            serve, Config(hostname="mx.test"), 0, host="127.0.0.1", handler=handler))
        idle = await connect(server)
        await idle.command("EHLO idle")
        busy = await connect(server)
        for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
            await busy.command(line)
        await busy.send(b"in flight\r\n")
        server.shutdown()
        await trio.sleep(1)
        assert (await idle.reply()).code == 421
        await busy.send(b".\r\n")
        assert (await busy.reply()).code == 250
        await server.wait_closed()
        await idle.aclose()
        await busy.aclose()
    assert stored == [b"in flight\r\n"]


async def test_sessions_still_busy_after_the_grace_period_are_cut_off(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(shutdown_grace=30))
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config, 0, host="127.0.0.1"))
        busy = await connect(server)
        for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
            await busy.command(line)
        start = trio.current_time()
        server.shutdown()
        await server.wait_closed()
        assert 30 <= trio.current_time() - start < 31
        # Cut off mid-message, the client still hears why.
        reply = await last_reply(busy)
        assert (reply.code, reply.lines) == (421, ["4.3.2 Service shutting down, try again later"])
        await busy.aclose()
