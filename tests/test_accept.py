"""Accepting on a trio.SocketListener's socket directly (``_accept.py``)."""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
from functools import partial

import pytest
import trio
import trio.testing

from trio_smtpd import Config, Server, serve
from trio_smtpd._accept import accept_sockets


async def test_a_burst_of_connections_is_accepted_and_closing_the_listener_stops() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[tuple[socket.socket, object]] = []
    locals_: set[object] = set()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_sockets, listener,
                           lambda sock, peer, local: (accepted.append((sock, peer)),
                                                      locals_.add(local)))
        while len(accepted) < 100:
            await trio.sleep(0.01)
        await listener.aclose()  # wakes the accept loop, which returns
    assert {peer for _, peer in accepted} == {c.getsockname() for c in clients}
    assert locals_ == {("127.0.0.1", port)}  # known from the listener, not asked each time
    for sock, _ in accepted:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock.close()
    for client in clients:
        client.close()


async def test_the_listeners_socket_stays_the_listeners() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    with trio.move_on_after(0.1):
        await accept_sockets(listener, lambda sock, peer, local: sock.close())
    # Our borrowed socket object was detached, not closed: the listener still works.
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.open_tcp_stream, "127.0.0.1", port)
        stream = await listener.accept()
    await stream.aclose()
    await listener.aclose()


async def test_out_of_descriptors_pauses_accepting_then_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                                     host="127.0.0.1"))
        assert server.port is not None
        fillers: list[int] = []
        clients = []
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
            with pytest.raises(OSError) as full:  # use up every descriptor...
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            assert full.value.errno == errno.EMFILE
            for _ in range(3):  # ...but three: two clients and one accepted connection
                os.close(fillers.pop())
            with caplog.at_level(logging.ERROR, logger="trio_smtpd"):
                for _ in range(2):
                    clients.append(socket.create_connection(("127.0.0.1", server.port)))
                    clients[-1].setblocking(False)
                with trio.fail_after(10):
                    while not any("accept failed" in r.getMessage() for r in caplog.records):
                        await trio.sleep(0.01)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # With descriptors back, the connection that waited is served too.
        for client in clients:
            greeting = b""
            with trio.fail_after(5):
                while not greeting.endswith(b"\r\n"):
                    await trio.lowlevel.wait_readable(client)
                    greeting += client.recv(100)
            assert greeting.startswith(b"220 ")
            client.close()
        server.shutdown()


async def test_a_wildcard_listener_reports_each_connections_own_local_address() -> None:
    listener = (await trio.open_tcp_listeners(0, host="0.0.0.0"))[0]
    port = listener.socket.getsockname()[1]
    seen: list[object] = []
    client = socket.create_connection(("127.0.0.1", port))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_sockets, listener,
                           lambda sock, peer, local: (seen.append(local), sock.close()))
        while not seen:
            await trio.sleep(0.01)
        await listener.aclose()
    assert seen == [None]  # so the session asks the socket: 127.0.0.1, not 0.0.0.0
    client.close()
