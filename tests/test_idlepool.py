"""Idle connections wait in the server's epoll set (``_idlepool.py``), over real TCP."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Server, Timeouts
from trio_smtpd._idlepool import IdlePool
from trio_smtpd._transport import PARK, SocketTransport

pytestmark = pytest.mark.skipif(not IdlePool.available, reason="the idle pool needs epoll")


def parked(server: Server) -> int:
    return len(server.idle_pool._parked)


async def test_a_new_connection_waits_in_the_pool_and_is_woken_by_its_client() -> None:
    async with tcp_server() as server:
        clients = [await connect(server) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert parked(server) == 3
        for client in clients:
            assert (await client.command("EHLO c")).code == 250
        assert parked(server) == 0  # in conversation: back with trio
        for client in clients:
            await client.aclose()


async def test_a_connection_idle_for_two_sweeps_moves_to_the_pool(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server() as server:
        client = await connect(server)
        assert (await client.command("EHLO c")).code == 250
        await trio.sleep(server.idle_pool.interval * 0.5)
        assert parked(server) == 0
        await trio.sleep(server.idle_pool.interval * 2)
        assert parked(server) == 1
        assert (await client.command("NOOP")).code == 250
        # A mail transaction is not disturbed by its pauses either.
        assert (await client.command("MAIL FROM:<a@b.c>")).code == 250
        await trio.sleep(server.idle_pool.interval * 3)
        assert parked(server) == 1
        assert (await client.command("RCPT TO:<d@e.f>")).code == 250
        await client.aclose()


async def test_timeout_and_shutdown_reach_parked_connections(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(command=60))
    async with tcp_server(config) as server:
        timing_out = await connect(server)
        await trio.sleep(30)
        shut_down = await connect(server)
        await trio.testing.wait_all_tasks_blocked()
        assert parked(server) == 2
        await trio.sleep(31)
        assert (await timing_out.reply()).code == 421  # timed out in the pool
        assert await timing_out.closed()
        server.shutdown()
        reply = await shut_down.reply()
        assert (reply.code, reply.lines) == (421, ["4.3.2 Service shutting down, "
                                                   "try again later"])
        await server.wait_closed()
        assert parked(server) == 0


async def test_a_parked_session_cut_off_at_the_end_of_the_grace_period(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(shutdown_grace=30))
    async with tcp_server(config) as server:
        busy = await connect(server)
        for line in ["EHLO c", "MAIL FROM:<a@b.c>"]:
            await busy.command(line)
        await trio.sleep(server.idle_pool.interval * 3)
        assert parked(server) == 1  # in a transaction, so shutdown waits for it...
        server.shutdown()
        await server.wait_closed()  # ...until the grace period ends: then cancelled
        assert await busy.closed()
        assert parked(server) == 0


async def test_without_epoll_connections_stay_with_trio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IdlePool, "available", False)
    async with tcp_server() as server:
        client = await connect(server)
        await trio.testing.wait_all_tasks_blocked()
        assert parked(server) == 0
        assert (await client.command("EHLO c")).code == 250
        await client.aclose()


async def test_a_connection_whose_pool_has_stopped_waits_with_trio() -> None:
    pool = IdlePool()
    ours, peer = socket.socketpair()
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run, list)
        transport = SocketTransport(ours, pool)
        nursery.cancel_scope.cancel()  # the pool stops (the server is going away)
    assert await transport.receive(100, wait_first=True) is PARK  # it was told to go there
    await transport.park()  # ...but the pool is gone: back to trio
    peer.sendall(b"QUIT\r\n")
    with trio.fail_after(5):
        assert await transport.receive(100) == b"QUIT\r\n"
    await transport.aclose()
    peer.close()
