"""The socket transport: system calls first, waits only when they would block."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from trio_smtpd._transport import (
    SocketTransport,
    StreamTransport,
    TransportError,
    transport_for,
)


def socket_pair() -> tuple[SocketTransport, socket.socket]:
    ours, theirs = socket.socketpair()
    return SocketTransport(ours), theirs


async def test_receive_returns_what_arrived_and_empty_at_end_of_file() -> None:
    transport, peer = socket_pair()
    peer.sendall(b"EHLO a\r\n")
    assert await transport.receive(100) == b"EHLO a\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.receive, 100)  # must wait: nothing has arrived
        await trio.testing.wait_all_tasks_blocked()
        peer.sendall(b"QUIT\r\n")
    peer.close()
    assert await transport.receive(100) == b""
    await transport.aclose()


async def received_when_woken(transport: SocketTransport | StreamTransport) -> object:
    """What a receive that is waiting returns when another task calls wake()."""
    results: list[object] = []

    async def receive() -> None:
        results.append(await transport.receive(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        transport.wake()
    [result] = results
    return result


async def test_wake_ends_a_blocked_receive_and_every_later_one() -> None:
    transport, peer = socket_pair()
    assert await received_when_woken(transport) is None
    peer.sendall(b"too late\r\n")
    assert await transport.receive(100) is None
    # A last word still goes out if it fits without waiting.
    assert await transport.send(b"421 bye\r\n")
    assert peer.recv(100) == b"421 bye\r\n"
    await transport.aclose()
    peer.close()


async def test_send_to_a_client_that_never_reads_waits_until_woken() -> None:
    transport, peer = socket_pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent: list[bool] = []

    async def send() -> None:
        sent.append(await transport.send(b"x" * 10_000_000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # blocked, not spinning
        transport.wake()
    assert sent == [False]
    # Once woken, a send that does not fit gives up at once instead of waiting.
    assert await transport.send(b"y" * 10_000_000) is False
    await transport.aclose()
    peer.close()


async def test_a_reset_connection_is_a_transport_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    tcp = SocketTransport(server_side)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    with pytest.raises(TransportError) as info:
        await tcp.receive(100)
    assert isinstance(info.value.__cause__, ConnectionResetError)
    await tcp.aclose()


async def test_data_that_is_already_there_still_lets_other_tasks_run() -> None:
    # A client that never pauses must not starve the other connections.
    transport, peer = socket_pair()
    peer.setblocking(False)
    ticks = 0

    async def other_connection() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_connection)
        for _ in range(50):
            peer.send(b"NOOP\r\n")
            assert await transport.receive(100) == b"NOOP\r\n"
        nursery.cancel_scope.cancel()
    assert ticks >= 49
    await transport.aclose()
    peer.close()


async def test_a_trio_socket_stream_gives_up_its_socket() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.open_tcp_stream, "127.0.0.1", port)
        accepted = await listener.accept()
    transport = transport_for(accepted)
    assert isinstance(transport, SocketTransport)
    await transport.aclose()
    await listener.aclose()
    memory = transport_for(trio.testing.memory_stream_pair()[0])
    assert isinstance(memory, StreamTransport)


async def test_stream_transport_wake_cancels_its_wait() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    transport = StreamTransport(ours)
    assert await received_when_woken(transport) is None
    assert await transport.receive(100) is None
    assert await transport.send(b"421 bye\r\n")  # the last word, bounded
    assert await theirs.receive_some(100) == b"421 bye\r\n"
    await transport.aclose()
