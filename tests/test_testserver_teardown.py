"""A test server leaves nothing behind: no thread, task, socket, port or file, even when
a client is still connected (idle, or in the middle of a message) when it stops."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator

import pytest
import trio

from trio_smtpd.testing import TestClient
from trio_smtpd.testserver import SMTPTestServer, ThreadedSMTPTestServer, open_smtp_test_server


def open_fds() -> set[str]:
    """This process's open file descriptors, each with what it is (socket, epoll...)."""
    directory = "/proc/self/fd"
    found = set()
    for fd in os.listdir(directory):
        # FileNotFoundError: the descriptor os.listdir() used to read the directory.
        with contextlib.suppress(FileNotFoundError):
            found.add(f"{fd} -> {os.readlink(f'{directory}/{fd}')}")
    return found


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def clients(host: str, port: int) -> Iterator[socket.socket]:
    """An idle client, and one in the middle of a message's data."""
    idle = socket.create_connection((host, port), timeout=10)
    yield idle
    busy = socket.create_connection((host, port), timeout=10)
    reader = busy.makefile("rb")
    reader.readline()
    for line in (b"HELO c.test", b"MAIL FROM:<a@b.c>", b"RCPT TO:<d@e.f>", b"DATA"):
        busy.sendall(line + b"\r\n")
        reply = reader.readline()
    assert reply.startswith(b"354")
    busy.sendall(b"Subject: never finished\r\n")
    reader.close()
    yield busy


def test_thread_server_leaves_no_thread_socket_port_or_file() -> None:
    threads, fds = set(threading.enumerate()), open_fds()
    server = ThreadedSMTPTestServer(tls="starttls").start()
    assert server.ca_file is not None and server.ca_file.exists()
    connected = list(clients(server.host, server.port))
    server.close()
    replies = [c.recv(1000) for c in connected]
    for client in connected:
        client.close()
    # Told, not just dropped (the idle one had not read its greeting yet).
    assert [r.splitlines()[-1][:4] for r in replies] == [b"421 ", b"421 "], replies
    assert set(threading.enumerate()) <= threads
    assert open_fds() <= fds
    assert refused(server.host, server.port)
    assert not server.ca_file.parent.exists()
    server.close()  # a second close does nothing


async def test_trio_server_leaves_no_task_socket_port_or_file() -> None:
    def all_tasks() -> set[trio.lowlevel.Task]:
        found, todo = set(), [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            found.add(task)
            todo += [t for nursery in task.child_nurseries for t in nursery.child_tasks]
        return found

    tasks, fds = all_tasks(), open_fds()
    async with trio.open_nursery() as nursery:
        server = await SMTPTestServer.start(nursery, lmtp=True)
        idle = TestClient(await trio.open_tcp_stream(server.host, server.port))
        busy = TestClient(await trio.open_tcp_stream(server.host, server.port))
        await busy.reply()
        for line in ("LHLO c.test", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"):
            reply = await busy.command(line)
        assert reply.code == 354
        await busy.send(b"Subject: never finished\r\n")
        await server.aclose()
        assert not nursery.child_tasks
    assert (await idle.reply()).code == 220
    assert (await idle.reply()).code == 421
    assert (await busy.reply()).code == 421
    await idle.aclose()
    await busy.aclose()
    assert all_tasks() <= tasks
    assert open_fds() <= fds
    assert await trio.to_thread.run_sync(refused, server.host, server.port)


@pytest.fixture
def without_trustme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)  # import trustme: ImportError


@pytest.mark.usefixtures("without_trustme")
def test_tls_without_the_extra_is_a_clear_error_and_starts_nothing() -> None:
    threads = set(threading.enumerate())
    with pytest.raises(RuntimeError, match=r"trio_smtpd\[testing\]"):
        ThreadedSMTPTestServer(tls="starttls").start()
    assert set(threading.enumerate()) <= threads


@pytest.mark.usefixtures("without_trustme")
async def test_trio_tls_without_the_extra_is_a_clear_error() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(RuntimeError, match=r"trio_smtpd\[testing\]"):
            await SMTPTestServer.start(nursery, tls="implicit")
        assert not nursery.child_tasks


def test_a_server_starts_once() -> None:
    with ThreadedSMTPTestServer() as server, pytest.raises(RuntimeError, match="already"):
        server.start()


def test_an_error_inside_the_server_is_raised_by_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not lost with its thread: the test that used the server fails at teardown."""

    class Broken:
        port = 1

        def __init__(self) -> None:
            self.stop = trio.Event()

        def shutdown(self, grace: float | None = None) -> None:
            self.stop.set()

    async def serve_then_fail(*args: object, task_status: trio.TaskStatus[Broken],
                              **kwargs: object) -> None:
        broken = Broken()
        task_status.started(broken)
        await broken.stop.wait()
        raise OSError("the server broke")

    monkeypatch.setattr("trio_smtpd.testserver.serve", serve_then_fail)
    server = ThreadedSMTPTestServer().start()
    with pytest.raises(BaseExceptionGroup) as raised:
        server.close()
    assert raised.group_contains(OSError, match="the server broke", depth=None)
    assert not [t for t in threading.enumerate() if t.name == "trio_smtpd test server"]


async def test_open_smtp_test_server_outside_pytest_fixtures() -> None:
    async with open_smtp_test_server(hostname="mx.test") as server:
        client = TestClient(await trio.open_tcp_stream(server.host, server.port))
        assert (await client.reply()).lines[0].startswith("mx.test ")
        await client.send_message("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\n")
        await client.aclose()
        [message] = await server.wait_for(1)
        with pytest.raises(RuntimeError, match="no TLS"):
            server.client_context()
    assert message.recipients == ["b@example.org"]
    assert await trio.to_thread.run_sync(refused, server.host, server.port)
