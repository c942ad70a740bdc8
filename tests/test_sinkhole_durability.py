"""Durability: acknowledged means on disk, even through SIGKILL; disk work stays off the loop."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from tests.conftest import Sinkhole
from trio_smtpd import Config, serve
from trio_smtpd.maildir import Maildir, MaildirWriter
from trio_smtpd.sinkhole.handler import SinkholeHandler
from trio_smtpd.testing import MemoryListener, TestClient

Factory = Callable[..., Sinkhole]
TRAILER = b"-- end of message --\r\n"


def message(ident: str) -> bytes:
    # Big enough that a kill can land in the middle of writing one.
    return (f"Subject: {ident}\r\n\r\n".encode() + (b"x" * 76 + b"\r\n") * 300
            + f"id={ident}\r\n".encode() + TRAILER)


def test_sigkill_under_load_loses_no_acknowledged_message(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory()
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
    stored: dict[str, bytes] = {}
    for name in os.listdir(sinkhole.maildir / "new"):
        data = (sinkhole.maildir / "new" / name).read_bytes()
        # Nothing partial is ever visible in new/.
        assert data.endswith(TRAILER), name
        ident = data.split(b"id=")[1].split(b"\r\n")[0].decode()
        assert ident not in stored
        stored[ident] = data
    for ident in acknowledged:
        assert ident in stored, f"message {ident} got 250 but is not in new/"
        assert stored[ident].endswith(message(ident))


class HeldMaildir(Maildir):
    """A Maildir whose commits wait (in their worker thread) until the test lets them go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committing = threading.Event()
        self.release = threading.Event()

    def open(self) -> MaildirWriter:
        writer = super().open()
        real_commit = writer._commit

        def held_commit() -> None:
            self.committing.set()
            assert self.release.wait(30)
            real_commit()

        writer._commit = held_commit  # type: ignore[method-assign]
        return writer


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
