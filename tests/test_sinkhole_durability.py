"""Durability: acknowledged means on disk, even through SIGKILL; disk work stays off the loop.

The SIGKILL test runs against each store: the Maildir alone, the Maildir with its SQLite
index (every acknowledged message has its file *and* its row), and PostgreSQL (every
acknowledged message is a committed row holding the whole message).
"""

from __future__ import annotations

import os
import signal
import smtplib
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
import trio.testing

from tests.conftest import Sinkhole
from tests.processes import commit_helpers, wait_gone
from trio_smtpd import Config, serve
from trio_smtpd.maildir import Maildir, MaildirWriter
from trio_smtpd.sinkhole.handler import SinkholeHandler
from trio_smtpd.testing import ClientReply, MemoryListener, TestClient

Factory = Callable[..., Sinkhole]
TRAILER = b"-- end of message --\r\n"


def message(ident: str) -> bytes:
    # Big enough that a kill can land in the middle of writing one.
    return (f"Subject: {ident}\r\n\r\n".encode() + (b"x" * 76 + b"\r\n") * 300
            + f"id={ident}\r\n".encode() + TRAILER)


@pytest.mark.parametrize("store", ["maildir", "sqlite"])
def test_sigkill_under_load_loses_no_acknowledged_message(sinkhole_factory: Factory,
                                                          store: str) -> None:
    sigkill_under_load(sinkhole_factory, store, store)


def test_sigkill_under_load_loses_no_acknowledged_message_postgresql(
        sinkhole_factory: Factory, postgres_url: str) -> None:
    # (A test of its own, not a parameter: the PostgreSQL server is a session fixture,
    # started before the test's leak check looks, and the test is interop.)
    sigkill_under_load(sinkhole_factory, postgres_url, "postgresql")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_the_commit_process_ends_with_the_sinkhole(sinkhole_factory: Factory,
                                                   signum: int) -> None:
    # The files are written, fsynced and renamed by one helper process (the commit
    # process), which must not outlive the server, however it ends.
    sinkhole = sinkhole_factory()
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.net"], message("one"))
        [helper] = commit_helpers(sinkhole.process.pid)
        client.sendmail("a@example.org", ["b@example.net"], message("two"))
    assert commit_helpers(sinkhole.process.pid) == [helper]  # (one for the server's life)
    assert len(sinkhole.stored()) == 2
    sinkhole.stop(signum)
    assert not wait_gone({helper}, 10)


def test_a_commit_process_killed_between_messages_is_replaced(
        sinkhole_factory: Factory) -> None:
    # (An administrator's kill, the OOM killer: the next message must not pay for it.)
    sinkhole = sinkhole_factory()
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.net"], message("one"))
        [helper] = commit_helpers(sinkhole.process.pid)
        os.kill(helper, signal.SIGKILL)
        assert not wait_gone({helper}, 10)
        client.sendmail("a@example.org", ["b@example.net"], message("two"))
    assert len(sinkhole.stored()) == 2
    assert [e["outcome"] for e in sinkhole.events("message")] == ["accepted"] * 2
    assert commit_helpers(sinkhole.process.pid) not in ([], [helper])
    with sqlite3.connect(sinkhole.maildir / "index.sqlite3") as connection:
        assert connection.execute("SELECT count(*) FROM messages").fetchone() == (2,)


def sigkill_under_load(sinkhole_factory: Factory, spec: str, store: str) -> None:
    sinkhole = sinkhole_factory("--store", spec)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        sent = 0
        while not stop.is_set():
            ident = f"{number}-{sent}"
            try:
                with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as smtp:
                    smtp.sendmail("load@example.org", ["sink@example.net"], message(ident))
            except (OSError, smtplib.SMTPException):
                return  # the server is gone
            with lock:
                acknowledged.append(ident)
            sent += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        sinkhole.wait_for("message", 40)
        sinkhole.process.send_signal(signal.SIGKILL)
        sinkhole.process.wait(10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(acknowledged) >= 40
    stored = stored_messages(sinkhole.maildir, spec)
    for ident in acknowledged:
        assert ident in stored, f"message {ident} got 250 but is not in the {store} store"
        assert stored[ident].endswith(message(ident))


def stored_messages(maildir: Path, store: str) -> dict[str, bytes]:
    """What the store holds, by message id; nothing partial, nothing twice."""
    found: dict[str, bytes] = {}
    if store.startswith("postgresql://"):
        assert os.listdir(maildir / "new") == []  # (small messages: all in the database)
        with psycopg.connect(store) as connection:
            bodies = [bytes(body) for (body,) in connection.execute(
                "SELECT body FROM messages").fetchall()]
    else:
        files = os.listdir(maildir / "new")
        bodies = [(maildir / "new" / name).read_bytes() for name in files]
        if store == "sqlite":
            with sqlite3.connect(maildir / "index.sqlite3") as connection:
                indexed = {f for (f,) in connection.execute("SELECT file FROM messages")}
            assert indexed <= set(files)  # a row names a file that is there
            # A file without a row was never acknowledged (the kill came between them).
            bodies = [body for name, body in zip(files, bodies, strict=True)
                      if name in indexed]
    for data in bodies:
        assert data.endswith(TRAILER)  # nothing partial is ever visible
        ident = data.split(b"id=")[1].split(b"\r\n")[0].decode()
        assert ident not in found
        found[ident] = data
    return found


class HeldMaildir(Maildir):
    """A Maildir whose commits wait (in their worker thread) until the test lets them go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committing = threading.Event()
        self.release = threading.Event()

    def _commit_batch(self, writers: list[MaildirWriter]) -> list[OSError | None]:
        self.committing.set()
        assert self.release.wait(30)
        return super()._commit_batch(writers)


async def test_disk_work_does_not_block_other_connections(tmp_path: Path) -> None:
    maildir = HeldMaildir(tmp_path / "mail")
    maildir.create()
    listener = MemoryListener()
    handler = SinkholeHandler("mx.test", maildir)
    with trio.fail_after(30):  # a hang guard: a blocked event loop would never get here
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, Config(hostname="mx.test"),
                                                 handler=handler, listeners=[listener]))
            writer_client = TestClient(await listener.connect())
            await writer_client.reply()
            for line in ["EHLO a", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
                await writer_client.command(line)
            await writer_client.send(b"Subject: slow disk\r\n\r\nbody\r\n.\r\n")
            await trio.to_thread.run_sync(maildir.committing.wait)
            # The first message is stuck in fsync/rename: another client is still served.
            other = TestClient(await listener.connect())
            assert (await other.reply()).code == 220
            assert (await other.command("EHLO b")).code == 250
            assert (await other.command("NOOP")).code == 250
            assert os.listdir(tmp_path / "mail" / "new") == []
            maildir.release.set()
            final = await writer_client.reply()
            assert final.code == 250 and "queued as" in final.lines[0]
            assert len(os.listdir(tmp_path / "mail" / "new")) == 1
            server.shutdown()


class HeldFsyncs:
    """``os.fsync`` replaced by one that waits, call by call, for the test to let it go."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # what each fsync was of, in order
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.entered.release()
        assert self.release.acquire(timeout=10)
        self._real(fd)

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.acquire, True, 10)


async def test_no_250_while_an_fsync_is_held(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the sinkhole's own handler and a real server: while either fsync of a
    # message (its file, then new/ after the rename) has not returned, the client must
    # not hold a 250, because a crash at that moment could still lose the message.
    maildir = Maildir(tmp_path / "mail")
    maildir.create()
    fsyncs = HeldFsyncs()
    monkeypatch.setattr(os, "fsync", fsyncs)
    listener = MemoryListener()
    replies: list[ClientReply] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve, Config(hostname="mx.test"),
                handler=SinkholeHandler("mx.test", maildir), listeners=[listener]))
            client = TestClient(await listener.connect())
            await client.reply()
            for line in ["EHLO a", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
                await client.command(line)
            await client.send(b"Subject: held\r\n\r\nbody\r\n.\r\n")

            answered = trio.Event()

            async def read_final_reply() -> None:
                replies.append(await client.reply())
                answered.set()

            nursery.start_soon(read_final_reply)
            await fsyncs.wait_entered()  # the message file's fsync
            # Every task has run as far as it can: a reply not waiting for this fsync
            # would have reached the client by now.
            await trio.testing.wait_all_tasks_blocked()
            assert fsyncs.calls[0].startswith(str(tmp_path / "mail" / "tmp") + "/")
            assert replies == []
            fsyncs.release.release()
            await fsyncs.wait_entered()  # new/'s, after the rename
            await trio.testing.wait_all_tasks_blocked()
            assert fsyncs.calls[1] == str(tmp_path / "mail" / "new")
            assert len(os.listdir(tmp_path / "mail" / "new")) == 1  # renamed, not yet durable
            assert replies == []
            fsyncs.release.release()
            await answered.wait()
            [name] = os.listdir(tmp_path / "mail" / "new")
            assert (replies[0].code, replies[0].lines) == (250, [f"2.0.0 queued as {name}"])
            assert len(fsyncs.calls) == 2
            server.shutdown()
