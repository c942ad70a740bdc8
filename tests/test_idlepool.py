"""New connections wait for their first command in the server's epoll set
(``_idlepool.py``), over real TCP."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Server, Timeouts
from trio_smtpd._idlepool import IdlePool
from trio_smtpd._socket_transport import SocketTransport
from trio_smtpd._transport import TIMEOUT
from trio_smtpd._watchdog import Watchdog

pytestmark = pytest.mark.skipif(not IdlePool.available, reason="the idle pool needs epoll")


def parked(server: Server) -> int:
    return len(server._idle_pool._parked)


async def test_a_new_connection_waits_in_the_pool_and_is_woken_by_its_client() -> None:
    async with tcp_server() as server:
        clients = [await connect(server) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert parked(server) == 3
        for client in clients:
            assert (await client.command("EHLO c")).code == 250
        await trio.testing.wait_all_tasks_blocked()
        assert parked(server) == 0  # it has spoken: it waits with trio from now on
        for client in clients:
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


async def test_without_epoll_connections_stay_with_trio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IdlePool, "available", False)
    async with tcp_server() as server:
        client = await connect(server)
        await trio.testing.wait_all_tasks_blocked()
        assert parked(server) == 0
        assert (await client.command("EHLO c")).code == 250
        await client.aclose()


async def test_a_connection_whose_pool_has_stopped_waits_with_trio(
        autojump_clock: trio.testing.MockClock) -> None:
    pool, watchdog = IdlePool(), Watchdog()
    ours, peer = socket.socketpair()
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        async with trio.open_nursery() as pool_nursery:
            await pool_nursery.start(pool.run)
            transport = SocketTransport(ours, watchdog, pool)
            pool_nursery.cancel_scope.cancel()  # the pool stops (the server is going away)
        assert not pool.running
        assert await transport.receive(100, trio.current_time() + 5) is TIMEOUT
        peer.sendall(b"QUIT\r\n")
        assert await transport.receive(100, trio.current_time() + 5) == b"QUIT\r\n"
        await transport.aclose()
        nursery.cancel_scope.cancel()
    peer.close()
