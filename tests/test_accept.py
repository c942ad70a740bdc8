"""The accept loop (``_accept.py``): what each accept() failure does, and the direct path
on a trio.SocketListener's socket."""

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

from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Server, serve
from trio_smtpd._accept import (
    AcceptError,
    ListenerAcceptor,
    SocketAcceptor,
    accept_loop,
    classify,
)

PER_CONNECTION = ["ECONNABORTED", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN",
                  "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR",
                  "ESOCKTNOSUPPORT", "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET"]
RESOURCES = ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"]


@pytest.mark.parametrize("name", [n for n in PER_CONNECTION if hasattr(errno, n)])
def test_a_failure_of_one_connection_is_ignored(name: str) -> None:
    assert classify(OSError(getattr(errno, name), name)) is AcceptError.IGNORE


@pytest.mark.parametrize("name", RESOURCES)
def test_running_out_of_resources_pauses(name: str) -> None:
    assert classify(OSError(getattr(errno, name), name)) is AcceptError.PAUSE


def test_a_closed_listener_stops_and_anything_else_is_raised() -> None:
    assert classify(OSError(errno.EBADF, "closed")) is AcceptError.STOP
    assert classify(OSError(errno.EISDIR, "?")) is AcceptError.RAISE


@pytest.mark.parametrize(("winerror", "action"), [
    (10054, AcceptError.IGNORE), (10053, AcceptError.IGNORE), (10060, AcceptError.IGNORE),
    (10024, AcceptError.PAUSE), (10055, AcceptError.PAUSE), (10038, AcceptError.STOP)])
def test_windows_socket_codes(winerror: int, action: AcceptError) -> None:
    # As Windows raises them: winerror set, errno the C runtime's mapping (or none).
    exc = OSError(errno.EINVAL if action is not AcceptError.STOP else 0, "WSA")
    exc.winerror = winerror  # type: ignore[attr-defined]
    assert classify(exc) is action


class ScriptedAcceptor:
    """Raises the given errors in turn, then gives one connection, then is closed."""

    def __init__(self, *errors: OSError) -> None:
        self.errors = list(errors)
        self.given = False

    async def accept(self) -> object:
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        if not self.given:
            self.given = True
            return "connection"
        return None


@pytest.mark.parametrize("name", [n for n in PER_CONNECTION + RESOURCES if hasattr(errno, n)])
async def test_the_loop_goes_on_after_a_transient_failure(
        name: str, autojump_clock: trio.testing.MockClock) -> None:
    spawned: list[object] = []
    acceptor = ScriptedAcceptor(OSError(getattr(errno, name), name))
    await accept_loop(acceptor, spawned.append)  # type: ignore[arg-type]
    assert spawned == ["connection"]


async def test_the_loop_stops_on_a_closed_listener_and_raises_the_unexpected() -> None:
    spawned: list[object] = []
    await accept_loop(ScriptedAcceptor(OSError(errno.EBADF, "x")), spawned.append)  # type: ignore[arg-type]
    assert spawned == []
    with pytest.raises(OSError):
        await accept_loop(ScriptedAcceptor(OSError(errno.EISDIR, "x")), spawned.append)  # type: ignore[arg-type]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "listener"])
@pytest.mark.parametrize("name", ["ECONNABORTED", "EPROTO", "ECONNRESET", "EPERM", "EMFILE"])
async def test_a_server_keeps_serving_after_an_accept_failure(
        name: str, direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    acceptor_class = SocketAcceptor if direct else ListenerAcceptor
    real_accept = acceptor_class.accept
    failures = [OSError(getattr(errno, name), name)]

    async def failing_once(self: object) -> object:
        if failures:
            raise failures.pop()
        return await real_accept(self)  # type: ignore[arg-type]

    monkeypatch.setattr(acceptor_class, "accept", failing_once)
    async with tcp_server(Config(hostname="mx.test", direct_sockets=direct)) as server:
        client = await connect(server)
        assert (await client.command("EHLO c")).code == 250
        await client.aclose()
    assert failures == []


async def test_a_burst_of_connections_is_accepted_and_closing_the_listener_stops() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[object] = []
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    acceptor = SocketAcceptor(listener)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, acceptor, accepted.append)
        while len(accepted) < 100:
            await trio.sleep(0.01)
        await listener.aclose()  # wakes the accept loop, which returns
    acceptor.close()
    assert {peer for _, peer, _ in accepted} == {c.getsockname() for c in clients}  # type: ignore[misc]
    for sock, _, local in accepted:  # type: ignore[misc]
        assert local == ("127.0.0.1", port)  # known from the listener, not asked each time
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock.close()
    for client in clients:
        client.close()


async def test_the_listeners_socket_stays_the_listeners() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    acceptor = SocketAcceptor(listener)
    with trio.move_on_after(0.1):
        await accept_loop(acceptor, lambda accepted: None)
    acceptor.close()
    # Our borrowed socket object was detached, not closed: the listener still works.
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.open_tcp_stream, "127.0.0.1", port)
        stream = await listener.accept()
    await stream.aclose()
    await listener.aclose()


async def test_a_wildcard_listener_reports_each_connections_own_local_address() -> None:
    listener = (await trio.open_tcp_listeners(0, host="0.0.0.0"))[0]
    port = listener.socket.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    acceptor = SocketAcceptor(listener)
    accepted = await acceptor.accept()
    assert isinstance(accepted, tuple)
    assert accepted[2] is None  # so the session asks the socket: 127.0.0.1, not 0.0.0.0
    accepted[0].close()
    acceptor.close()
    await listener.aclose()
    client.close()


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
