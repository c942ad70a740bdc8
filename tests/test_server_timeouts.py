"""Every server timeout, connection limits and graceful shutdown with messages in flight.

Timeouts run on trio's mock clock (``autojump_clock``): virtual time jumps ahead whenever
every task is waiting, so a five-minute timeout costs nothing and nothing depends on the
machine's speed.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

import trio_smtpd
from trio_smtpd import Config, Message, Server, Session, Timeouts, serve
from trio_smtpd.testing import ClientReply, MemoryListener, TestClient, open_client


@asynccontextmanager
async def memory_server(config: Config, *, lockstep: bool = False,
                        handler: trio_smtpd.Handler | None = None) -> AsyncIterator[
                            tuple[Server, MemoryListener]]:
    listener = MemoryListener(lockstep=lockstep)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, listeners=[listener],
                                             handler=handler))
        yield server, listener
        server.shutdown()


async def tarpit_every_client(delay: float, session: Session) -> None:
    """A handler that accepts everything and holds back each reply by ``delay``."""
    async for event in session:
        if isinstance(event, trio_smtpd.Connect):
            session.reply_delay = delay
        event.accept()


async def last_reply_then_closed(client: TestClient) -> ClientReply:
    """Read replies until the server closes; return the last one."""
    last = None
    while True:
        try:
            last = await client.reply()
        except EOFError:
            assert last is not None
            return last


async def test_command_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with open_client(Config(hostname="mx.test")) as client:
        assert (await client.command("EHLO c")).code == 250
        start = trio.current_time()
        reply = await last_reply_then_closed(client)
        assert (reply.code, reply.lines) == (421, ["4.4.2 Timeout, closing connection"])
        assert trio.current_time() - start >= Timeouts().command


async def test_data_block_timeout_drops_the_message(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(data_block=60))
    async with memory_server(config) as (server, listener):
        client = TestClient(await listener.connect())
        await client.reply()
        for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
            await client.command(line)
        await client.send(b"Subject: half a message\r\n")
        start = trio.current_time()
        reply = await last_reply_then_closed(client)
        assert reply.code == 421 and reply.lines[0].startswith("4.4.2")
        assert 60 <= trio.current_time() - start < Timeouts().command
        # Nothing reached the application: transactions() has nothing waiting.
        with trio.move_on_after(1):
            async for tx in server.transactions():
                raise AssertionError(f"a timed-out message was delivered: {tx}")


async def test_session_cap(autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(session=1000))
    async with open_client(config) as client:
        start = trio.current_time()
        while True:
            await trio.sleep(200)  # each command well inside the command timeout
            reply = await client.command("NOOP")
            if reply.code != 250:
                break
        assert (reply.code, reply.lines) == (421, ["4.4.2 Session too long, closing connection"])
        assert 1000 <= trio.current_time() - start < 1300


async def test_message_decision_timeout_is_451(autojump_clock: trio.testing.MockClock) -> None:
    # Nobody iterates transactions(): the client is not left hanging forever.
    async with open_client(Config(hostname="mx.test")) as client:
        start = trio.current_time()
        replies = await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")
        assert replies[-1].code == 451
        assert trio.current_time() - start >= Timeouts().message_decision


async def test_tls_handshake_timeout(autojump_clock: trio.testing.MockClock,
                                     server_tls: ssl.SSLContext) -> None:
    config = Config(hostname="mx.test", tls=server_tls)
    async with open_client(config) as client:
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("STARTTLS")).code == 220
        start = trio.current_time()
        assert await client.closed()  # no ClientHello ever came
        assert trio.current_time() - start >= Timeouts().tls_handshake


async def test_write_timeout_for_a_client_that_never_reads(
        autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server(Config(hostname="mx.test"), lockstep=True) as (server, listener):
        silent = await listener.connect()  # never reads even the greeting
        await trio.sleep(Timeouts().write + 1)
        assert server.connections == 0
        # Meanwhile, and afterwards, others are served.
        other = TestClient(await listener.connect())
        assert (await other.reply()).code == 220
        await other.aclose()
        await silent.aclose()


async def test_decision_timeout_for_an_authenticator(autojump_clock: trio.testing.MockClock,
                                                    server_tls: ssl.SSLContext) -> None:
    async def never(credentials: trio_smtpd.Credentials) -> str | None:
        await trio.sleep_forever()
        raise AssertionError

    config = Config(hostname="mx.test", authenticator=never, auth_requires_tls=False)
    async with open_client(config) as client:
        await client.command("EHLO c")
        reply = await client.command("AUTH PLAIN AHUAcA==")
        assert (reply.code, reply.lines) == (454, ["4.7.0 Temporary authentication failure"])


async def test_connection_limit_overall(autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", max_connections=2)
    async with memory_server(config) as (_server, listener):
        first, second = [TestClient(await listener.connect()) for _ in range(2)]
        assert (await first.reply()).code == 220 and (await second.reply()).code == 220
        third = TestClient(await listener.connect())
        reply = await third.reply()
        assert (reply.code, reply.lines) == (421, ["4.7.0 Too many connections, try again later"])
        assert await third.closed()
        assert (await first.command("QUIT")).code == 221
        await trio.sleep(1)
        fourth = TestClient(await listener.connect())
        assert (await fourth.reply()).code == 220  # recovered
        for client in (second, fourth):
            await client.aclose()


@pytest.mark.usefixtures("both_transports")
async def test_connection_limit_per_ip_over_tcp() -> None:
    config = Config(hostname="mx.test", max_connections_per_ip=2)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, 0, host="127.0.0.1"))
        port = server.port
        assert port

        async def connect() -> TestClient:
            return TestClient(await trio.open_tcp_stream("127.0.0.1", port))

        a, b = await connect(), await connect()
        assert (await a.reply()).code == 220 and (await b.reply()).code == 220
        c = await connect()
        reply = await c.reply()
        assert (reply.code, reply.lines) == (421, ["4.7.0 Too many connections from your address"])
        assert (await a.command("QUIT")).code == 221
        with trio.fail_after(10):
            while server.connections > 1:
                await trio.sleep(0.01)
        d = await connect()
        assert (await d.reply()).code == 220
        for client in (b, c, d):
            await client.aclose()
        server.shutdown()


async def test_graceful_shutdown_loses_no_acknowledged_message(
        autojump_clock: trio.testing.MockClock) -> None:
    stored: list[bytes] = []

    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, Message):
                await trio.sleep(5)  # storing takes a while
                stored.append(event.transaction.data)
            event.accept()

    config = Config(hostname="mx.test", timeouts=Timeouts(shutdown_grace=30))
    async with trio.open_nursery() as outer:
        listener = MemoryListener()
        server = await outer.start(partial(serve, config, listeners=[listener],
                                           handler=handler))
        idle = TestClient(await listener.connect())
        await idle.reply()
        await idle.command("EHLO idle")
        busy = []
        for n in range(5):
            client = TestClient(await listener.connect())
            await client.reply()
            for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
                await client.command(line)
            await client.send(f"message {n}\r\n".encode())
            busy.append(client)
        server.shutdown()
        await trio.sleep(0.1)
        # Idle sessions are told at once; new connections are no longer accepted.
        assert (await idle.reply()).code == 421
        with pytest.raises(trio.ClosedResourceError):
            await listener.connect()
        # Sessions in DATA finish within the grace period and get their 250.
        acknowledged = []
        for n, client in enumerate(busy):
            await client.send(b".\r\n")
            if (await client.reply()).code == 250:
                acknowledged.append(f"message {n}\r\n".encode())
        assert len(acknowledged) == 5
        await server.wait_closed()
    assert sorted(stored) == sorted(acknowledged)


async def test_cancelling_serve_is_graceful(autojump_clock: trio.testing.MockClock) -> None:
    stored: list[bytes] = []
    replies: list[int] = []

    async def consume(server: Server) -> None:
        async for tx in server.transactions():
            stored.append(tx.data)
            tx.accept()

    async with trio.open_nursery() as outer:
        listener = MemoryListener()
        with trio.CancelScope() as serve_scope:
            server = await outer.start(partial(serve, Config(hostname="mx.test"),
                                               listeners=[listener]))
        outer.start_soon(consume, server)
        client = TestClient(await listener.connect())
        await client.reply()
        for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
            await client.command(line)
        await client.send(b"in flight\r\n")
        outer.cancel_scope.deadline = trio.current_time() + 1000  # a hang guard
        serve_scope.cancel()
        await trio.sleep(1)
        await client.send(b".\r\n")
        replies.append((await client.reply()).code)
        await server.wait_closed()
        outer.cancel_scope.cancel()
    assert replies == [250]
    assert stored == [b"in flight\r\n"]


@pytest.mark.usefixtures("both_transports")
def test_smtplib_sees_421_on_shutdown() -> None:
    # The same through a real client over TCP, without the mock clock. The client reads
    # the reply the server sends unasked; a close without one raises, failing the test.
    async def main() -> tuple[int, bytes]:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                                 host="127.0.0.1"))
            port = server.port
            greeted = trio.Event()

            def idle_client() -> tuple[int, bytes]:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                try:
                    client.ehlo("c")
                    trio.from_thread.run_sync(greeted.set)
                    shut.wait(10)
                    return client.getreply()
                finally:
                    client.close()

            shut = threading.Event()
            async with trio.open_nursery() as clients:
                result: list[tuple[int, bytes]] = []

                async def run() -> None:
                    result.append(await trio.to_thread.run_sync(idle_client))

                clients.start_soon(run)
                with trio.fail_after(10):
                    await greeted.wait()  # the session is idle, between commands
                server.shutdown()
                await server.wait_closed()
                shut.set()
            return result[0]

    assert trio.run(main) == (421, b"4.3.2 Service shutting down, try again later")


async def test_tarpit_delays_only_the_chosen_client(
        autojump_clock: trio.testing.MockClock) -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Connect) and session.info.id.endswith(".1"):
                session.reply_delay = 10.0
            event.accept()

    async with memory_server(Config(hostname="mx.test"), handler=handler) as (_s, listener):
        slow = TestClient(await listener.connect())
        start = trio.current_time()
        assert (await slow.reply()).code == 220
        assert (await slow.command("NOOP")).code == 250
        assert trio.current_time() - start >= 20
        fast = TestClient(await listener.connect())
        start = trio.current_time()
        assert (await fast.reply()).code == 220
        assert (await fast.command("NOOP")).code == 250
        assert trio.current_time() - start < 1
        await slow.aclose()
        await fast.aclose()


async def test_the_tarpit_holds_back_the_last_reply_too(
        autojump_clock: trio.testing.MockClock) -> None:
    # Found by review (2026-12-02): the 221 to QUIT (and any reply the session ends
    # with) went out at once; a tarpit holds back each batch of replies.
    async with memory_server(Config(hostname="mx.test"),
                             handler=partial(tarpit_every_client, 10.0)) as (_s, listener):
        client = TestClient(await listener.connect())
        assert (await client.reply()).code == 220
        start = trio.current_time()
        assert (await client.command("QUIT")).code == 221
        assert trio.current_time() - start >= 10
        await client.aclose()


async def test_a_tarpitted_client_gets_its_whole_command_timeout_after_the_reply(
        autojump_clock: trio.testing.MockClock) -> None:
    # The client cannot answer a reply it has not had: its time runs from the reply.
    config = Config(hostname="mx.test", timeouts=Timeouts(command=10))
    async with memory_server(config, handler=partial(tarpit_every_client, 8.0)) as (_s, listener):
        client = TestClient(await listener.connect())
        assert (await client.reply()).code == 220
        assert (await client.command("EHLO c")).code == 250
        await trio.sleep(5)
        assert (await client.command("NOOP")).code == 250
        await client.aclose()


async def test_starttls_can_be_withheld_per_client(server_tls: ssl.SSLContext) -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Connect):
                session.offer_starttls = False
            event.accept()

    async with open_client(Config(hostname="mx.test", tls=server_tls), handler) as client:
        ehlo = await client.command("EHLO c")
        assert "STARTTLS" not in ehlo.lines
        assert (await client.command("STARTTLS")).code == 502
    async with open_client(Config(hostname="mx.test", tls=server_tls)) as client:
        assert "STARTTLS" in (await client.command("EHLO c")).lines


async def test_failed_starttls_handshake_is_visible_to_the_handler(
        server_tls: ssl.SSLContext) -> None:
    seen: list[bool] = []

    async def handler(session: Session) -> None:
        async for event in session:
            event.accept()
        seen.append(session.tls_failed)

    async with open_client(Config(hostname="mx.test", tls=server_tls), handler) as client:
        await client.command("EHLO c")
        assert (await client.command("STARTTLS")).code == 220
        await client.send(b"definitely not a TLS ClientHello\r\n" * 20)
        with trio.fail_after(10):
            while not seen:
                await trio.sleep(0.01)
    assert seen == [True]


async def test_command_timeout_runs_from_the_start_of_the_line(
        autojump_clock: trio.testing.MockClock) -> None:
    # Slowloris: a byte every minute never completes a line; each byte used to restart
    # the five-minute timeout, keeping the connection forever.
    async with open_client(Config(hostname="mx.test")) as client:
        start = trio.current_time()
        with trio.move_on_after(3600):
            for byte in b"EHLO trickling-forever" * 10:
                try:
                    await client.send(bytes([byte]))
                except trio.BrokenResourceError:
                    break  # the server hung up
                await trio.sleep(60)
        reply = await last_reply_then_closed(client)
        assert reply.code == 421
        assert trio.current_time() - start < Timeouts().command + 120


# A deadline for each record of message data (a line of DATA, or 1000 octets), from its
# first byte, as commands already have one per line: Timeouts.data_block on each read
# alone let a client trickling a byte at a time hold a session in DATA for its whole cap.


@asynccontextmanager
async def accepting_server(config: Config) -> AsyncIterator[MemoryListener]:
    """A server whose application accepts every message."""
    async with memory_server(config) as (server, listener), trio.open_nursery() as nursery:
        async def accept_all() -> None:
            async for tx in server.transactions():
                tx.accept()

        nursery.start_soon(accept_all)
        yield listener
        nursery.cancel_scope.cancel()


async def open_data(listener: MemoryListener, *, bdat: int | None = None) -> TestClient:
    client = TestClient(await listener.connect())
    await client.reply()
    for line in ["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>"]:
        assert (await client.command(line)).code == 250
    if bdat is None:
        assert (await client.command("DATA")).code == 354
    else:
        await client.send(f"BDAT {bdat} LAST\r\n".encode())
    return client


async def trickle(client: TestClient, data: bytes, every: float) -> None:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until the server hangs up."""
    with trio.move_on_after(3600):
        for byte in data:
            try:
                await client.send(bytes([byte]))
            except trio.BrokenResourceError:
                return
            await trio.sleep(every)


@pytest.mark.parametrize("bdat", [None, 5000])
async def test_trickled_message_data_is_cut(autojump_clock: trio.testing.MockClock,
                                            bdat: int | None) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(data_block=60))
    async with memory_server(config) as (_, listener):
        client = await open_data(listener, bdat=bdat)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, client, b"Subject: a byte every 20 s" * 40, 20)
            reply = await last_reply_then_closed(client)
            nursery.cancel_scope.cancel()
        assert (reply.code, reply.lines) == (421, ["4.4.2 Timeout, closing connection"])
        # Each byte came well within 60 s of the last, but no record was ever finished.
        assert 60 <= trio.current_time() - start < 60 + 20


async def test_slow_but_steady_data_is_not_cut(
        autojump_clock: trio.testing.MockClock) -> None:
    # Each line (DATA) or 1000 octets (BDAT) within data_block of the last: however long
    # the whole takes, the message is taken.
    config = Config(hostname="mx.test", timeouts=Timeouts(data_block=60, session=100000))
    async with accepting_server(config) as listener:
        client = await open_data(listener)
        start = trio.current_time()
        for n in range(10):
            await client.send(f"Line {n}\r\n".encode())
            await trio.sleep(50)
        await client.send(b".\r\n")
        assert (await client.reply()).code == 250
        bdat = await open_data(listener, bdat=5000)
        for _ in range(5):  # one 5000-octet line, 1000 octets every 50 s
            await bdat.send(b"x" * 1000)
            await trio.sleep(50)
        assert (await bdat.reply()).code == 250
        assert trio.current_time() - start > 700  # (far longer than any one deadline)
        await client.aclose()
        await bdat.aclose()


async def test_a_command_after_a_long_message_gets_the_whole_command_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    # The end of a message and the start of the next command in one read: the command's
    # timeout runs from then, not from the DATA command long before.
    config = Config(hostname="mx.test", timeouts=Timeouts(data_block=60, session=100000))
    async with accepting_server(config) as listener:
        client = await open_data(listener)
        for n in range(10):  # 500 s of message, longer than the command timeout
            await client.send(f"Line {n}\r\n".encode())
            await trio.sleep(50)
        await client.send(b".\r\nQU")
        assert (await client.reply()).code == 250
        await trio.sleep(Timeouts().command / 2)
        await client.send(b"IT\r\n")
        assert (await client.reply()).code == 221
