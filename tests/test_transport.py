"""The transports: each call bounded by its deadline, on both the fast path
(``SocketTransport``, a raw socket and the watchdog) and the portable one
(``StreamTransport`` over ``trio.SocketStream``, a cancel scope per call)."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trio_smtpd._socket_transport import SocketTransport
from trio_smtpd._transport import EOF, TIMEOUT, WOKEN, StreamTransport, Transport, TransportError
from trio_smtpd._watchdog import Watchdog

Pair = tuple[Transport, socket.socket]


def make(kind: str, ours: socket.socket, watchdog: Watchdog) -> Transport:
    if kind == "socket":
        return SocketTransport(ours, watchdog)
    return StreamTransport(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))


@pytest.fixture(params=["socket", "stream"])
async def pair(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    watchdog = Watchdog()
    await nursery.start(watchdog.run)
    ours, theirs = socket.socketpair()
    transport = make(request.param, ours, watchdog)
    yield transport, theirs
    await transport.aclose()
    theirs.close()


async def test_receive_returns_what_arrived_and_eof_at_end_of_file(pair: Pair) -> None:
    transport, peer = pair
    peer.sendall(b"EHLO a\r\n")
    assert await transport.receive(100, trio.current_time() + 10) == b"EHLO a\r\n"
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_append, results,
                           transport.receive(100, trio.current_time() + 10))
        await trio.testing.wait_all_tasks_blocked()  # it must wait: nothing has arrived
        peer.sendall(b"QUIT\r\n")
    assert results == [b"QUIT\r\n"]
    peer.shutdown(socket.SHUT_WR)
    assert await transport.receive(100, trio.current_time() + 10) is EOF


async def _append(results: list[object], awaitable: object) -> None:
    results.append(await awaitable)  # type: ignore[misc]


async def test_receive_times_out_at_its_deadline(
        pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    transport, _ = pair
    start = trio.current_time()
    assert await transport.receive(100, start + 60) is TIMEOUT
    assert 60 <= trio.current_time() - start < 60.2
    assert await transport.receive(100, trio.current_time() - 1) is TIMEOUT  # past already


async def test_wake_ends_a_waiting_receive(pair: Pair) -> None:
    transport, _ = pair
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_append, results,
                           transport.receive(100, trio.current_time() + 60))
        await trio.testing.wait_all_tasks_blocked()
        transport.wake()
    assert results == [WOKEN]


async def test_send_to_a_client_that_never_reads_gives_up_at_the_deadline(
        pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    transport, peer = pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    start = trio.current_time()
    assert await transport.send(b"x" * 10_000_000, start + 30) is False
    assert 30 <= trio.current_time() - start < 30.2


async def test_a_reset_connection_is_a_transport_error(nursery: trio.Nursery) -> None:
    watchdog = Watchdog()
    await nursery.start(watchdog.run)
    for kind in ("socket", "stream"):
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        listener.close()
        transport = make(kind, server_side, watchdog)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        with pytest.raises(TransportError):
            await transport.receive(100, trio.current_time() + 10)
        await transport.aclose()


async def test_data_that_is_already_there_still_lets_other_tasks_run(
        nursery: trio.Nursery) -> None:
    # A client that never pauses must not starve the other connections.
    watchdog = Watchdog()
    await nursery.start(watchdog.run)
    ours, peer = socket.socketpair()
    transport = SocketTransport(ours, watchdog)
    ticks = 0

    async def other_connection() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as inner:
        inner.start_soon(other_connection)
        for _ in range(50):
            peer.send(b"NOOP\r\n")
            assert await transport.receive(100, trio.current_time() + 10) == b"NOOP\r\n"
        inner.cancel_scope.cancel()
    assert ticks >= 49
    await transport.aclose()
    peer.close()


@pytest.mark.parametrize("ended_by", ["deadline", "wake"])
async def test_after_an_ended_wait_a_socket_is_only_written_without_waiting(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, ended_by: str) -> None:
    # A wait ended early is ended by trio.lowlevel.notify_closing, which expects the
    # socket to be closed next, with no new wait on it: the session's last word (its
    # 421) goes out if it fits in the socket's buffer, and is given up if it does not.
    watchdog = Watchdog()
    await nursery.start(watchdog.run)
    ours, peer = socket.socketpair()
    transport = SocketTransport(ours, watchdog)
    async with trio.open_nursery() as waiting:
        waiting.start_soon(transport.receive, 100, trio.current_time() + 60)
        await trio.testing.wait_all_tasks_blocked()
        if ended_by == "wake":
            transport.wake()
    assert await transport.send(b"421 closing\r\n", trio.current_time() + 10) is True
    assert peer.recv(100) == b"421 closing\r\n"
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    start = trio.current_time()
    assert await transport.send(b"x" * 10_000_000, start + 10) is False
    assert trio.current_time() == start  # no wait on the socket
    await transport.aclose()
    peer.close()
