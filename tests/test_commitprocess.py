"""The commit process: a helper process that does the file work of Maildir batches."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_smtpd import _commitprocess
from trio_smtpd._commitprocess import Database
from trio_smtpd.maildir import CommitProcess, Maildir, MaildirWriter, RecordsInDatabase

from .processes import alive, commit_helpers, wait_gone


@pytest.fixture
def process() -> Iterator[CommitProcess]:
    committer = CommitProcess()
    yield committer
    committer.close()


async def test_the_helper_does_the_file_work_of_a_batch(
        tmp_path: Path, process: CommitProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # This process never fsyncs, writes, renames: yet each message is in new/, whole.
    def not_here(*args: object) -> None:
        raise AssertionError("file work in the server's process")

    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    timings: list[str] = []
    maildir.on_fsync = lambda kind, seconds: timings.append(kind)
    for name in ("fsync", "rename", "write"):
        monkeypatch.setattr(os, name, not_here)
    names: dict[str, bytes] = {}

    async def deliver(number: int) -> None:
        data = b"Subject: %d\r\n\r\nbody\r\n" % number
        names[await maildir.deliver(data)] = data

    async with trio.open_nursery() as nursery:
        for number in range(20):
            nursery.start_soon(deliver, number)
    monkeypatch.undo()
    assert {name: (tmp_path / "new" / name).read_bytes() for name in names} == names
    assert os.listdir(tmp_path / "tmp") == []
    assert timings.count("file") == 20 and timings.count("directory") == 20
    assert len(commit_helpers(os.getpid())) == 1


async def test_a_message_begun_in_a_file_is_finished_by_the_helper(
        tmp_path: Path, process: CommitProcess) -> None:
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    await maildir.deliver(b"the helper, started")
    writer = maildir.open()
    body = os.urandom(writer.BUFFER + 100)  # in tmp/ already, and 100 octets in the buffer
    await writer.write(body[:writer.BUFFER])
    await writer.write(body[writer.BUFFER:])
    assert (tmp_path / "tmp" / writer.name).stat().st_size == writer.BUFFER
    fds = len(os.listdir("/proc/self/fd"))
    name = await writer.commit()
    assert (tmp_path / "new" / name).read_bytes() == body
    assert len(os.listdir("/proc/self/fd")) == fds - 1  # (its descriptor closed here too)


async def test_a_message_that_fails_in_the_helper_fails_alone(
        tmp_path: Path, process: CommitProcess) -> None:
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    writers = [maildir.open() for _ in range(3)]
    for number, writer in enumerate(writers):
        await writer.write(b"message %d\r\n" % number)
    writers[1]._tmp = tmp_path / "no such folder" / writers[1].name
    errors = maildir._commit_batch(writers)  # (as one batch, in this thread)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], FileNotFoundError)
    assert sorted(os.listdir(tmp_path / "new")) == sorted([writers[0].name,
                                                           writers[2].name])
    assert not writers[1].published and os.listdir(tmp_path / "tmp") == []


async def test_a_disk_error_in_the_helper_is_the_same_error_here(
        tmp_path: Path, process: CommitProcess) -> None:
    # ENOSPC must stay ENOSPC (the sinkhole answers 452 for it, 451 for the rest).
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    writer = maildir.open()
    await writer.write(b"x" * 10)
    writer._fd = os.open(full, os.O_WRONLY)  # (a file whose writes find no room)
    with pytest.raises(OSError) as info:
        await writer.commit()
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "new") == []


async def test_a_batch_with_more_descriptors_than_one_request_carries(
        tmp_path: Path, process: CommitProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_commitprocess, "MAX_FDS", 3)
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    writers = [maildir.open() for _ in range(8)]
    for number, writer in enumerate(writers):
        writer.BUFFER = 1  # each in its file already
        await writer.write(b"message %d\r\n" % number)
    assert maildir._commit_batch(writers) == [None] * 8
    assert {(tmp_path / "new" / w.name).read_bytes() for w in writers} == {
        b"message %d\r\n" % number for number in range(8)}


async def with_a_helper(path: Path, process: CommitProcess) -> tuple[Maildir, int]:
    """A Maildir in ``path`` that has committed a message, and the helper that did."""
    maildir = Maildir(path, commit_process=process)
    maildir.create()
    await maildir.deliver(b"first")
    [helper] = commit_helpers(os.getpid())
    return maildir, helper


async def test_a_helper_that_died_idle_is_replaced_unseen(
        tmp_path: Path, process: CommitProcess) -> None:
    maildir, helper = await with_a_helper(tmp_path, process)
    os.kill(helper, signal.SIGKILL)
    assert not wait_gone({helper}, 10)
    await maildir.deliver(b"second")  # no 451 for a helper that was not working on it
    assert len(os.listdir(tmp_path / "new")) == 2
    assert commit_helpers(os.getpid()) != [helper]


def test_a_helper_that_dies_during_a_batch_fails_that_batch(
        tmp_path: Path, process: CommitProcess) -> None:
    (tmp_path / "new").mkdir()
    reading, writing = os.pipe()  # a "file" that takes 64 KiB, then blocks the helper
    outcome: list[object] = []

    def commit() -> None:
        files = [_commitprocess.FileCommit(str(tmp_path / "t"), str(tmp_path / "new" / "n"),
                                           b"x" * 1_000_000, writing)]
        try:
            outcome.append(process.commit(str(tmp_path / "new"), files))
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=commit)
    thread.start()
    assert os.read(reading, 1)  # the helper is writing
    [helper] = commit_helpers(os.getpid())
    os.kill(helper, signal.SIGKILL)
    thread.join(10)
    os.close(writing)
    os.close(reading)
    [failure] = outcome
    assert isinstance(failure, OSError) and "commit process failed" in str(failure)
    assert os.listdir(tmp_path / "new") == []


async def test_signals_that_stop_the_server_do_not_stop_its_helper(
        tmp_path: Path, process: CommitProcess) -> None:
    # SIGINT from a terminal or SIGTERM to a whole service stops the server gracefully:
    # its helper must go on until the server closes it, after the last commit.
    maildir, helper = await with_a_helper(tmp_path, process)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(helper, signum)
    await trio.sleep(0.2)
    await maildir.deliver(b"second")
    assert commit_helpers(os.getpid()) == [helper]


async def test_closed_the_helper_ends_and_commits_go_on_in_a_thread(
        tmp_path: Path) -> None:
    process = CommitProcess()
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    await maildir.deliver(b"first")
    [helper] = commit_helpers(os.getpid())
    process.close()
    assert not alive(helper) and not process.usable
    await maildir.deliver(b"second")
    assert len(os.listdir(tmp_path / "new")) == 2 and commit_helpers(os.getpid()) == []


def test_the_helper_ends_when_the_server_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time, trio
        from trio_smtpd.maildir import CommitProcess, Maildir
        maildir = Maildir({str(tmp_path)!r}, commit_process=CommitProcess())
        maildir.create()
        trio.run(maildir.deliver, b"x")
        print("committed", flush=True)
        time.sleep(60)
    """)
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"committed\n"
        [helper] = commit_helpers(server.pid)
        server.kill()
        server.wait()
    finally:
        server.kill()
        server.wait()
    assert not wait_gone({helper}, 10)


async def test_a_subclass_with_steps_of_its_own_commits_in_its_thread(
        tmp_path: Path, process: CommitProcess) -> None:
    class Own(MaildirWriter):
        commits_elsewhere = False

    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    writer = Own(maildir, maildir.unique_name())
    await writer.write(b"own")
    assert maildir._commit_batch([writer]) == [None]
    assert (tmp_path / "new" / writer.name).read_bytes() == b"own"
    assert commit_helpers(os.getpid()) == []  # (no helper was started for it)


async def test_a_helper_that_cannot_start_leaves_the_commits_to_this_process(
        tmp_path: Path, process: CommitProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # (As where this module is no file Python can run, or no process can be started.)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    writer = maildir.open()
    writer.BUFFER = 10
    await writer.write(b"0123456789")  # in its file
    await writer.write(b" and the rest")  # in the buffer
    name = await writer.commit()
    assert (tmp_path / "new" / name).read_bytes() == b"0123456789 and the rest"
    assert not process.usable
    assert await maildir.deliver(b"the next one too") in os.listdir(tmp_path / "new")


async def test_a_helper_lost_between_parts_of_a_batch_fails_it_rather_than_redo_it(
        tmp_path: Path, process: CommitProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first part is in new/ already: committing the batch again here would write
    # those messages a second time, from buffers already sent. 451 for all, once.
    monkeypatch.setattr(_commitprocess, "MAX_FDS", 1)
    real_request = CommitProcess._request
    parts: list[int] = []

    def request(self: CommitProcess, new: str, files: list[_commitprocess.FileCommit],
                records: _commitprocess.Records | None) -> list[_commitprocess.FileOutcome]:
        parts.append(len(files))
        if len(parts) == 2:
            raise _commitprocess.Unavailable(errno.EIO, "no commit process")
        return real_request(self, new, files, records)

    monkeypatch.setattr(CommitProcess, "_request", request)
    maildir = Maildir(tmp_path, commit_process=process)
    maildir.create()
    writers = [maildir.open() for _ in range(2)]
    for writer in writers:
        await writer.write(b"message\r\n")
    errors = maildir._commit_batch(writers)
    assert parts == [1, 1] and all(isinstance(error, OSError) for error in errors)
    assert os.listdir(tmp_path / "new") == [writers[0].name]
    assert (tmp_path / "new" / writers[0].name).read_bytes() == b"message\r\n"
    assert os.listdir(tmp_path / "tmp") == []


async def test_records_the_helper_cannot_write_keep_every_message_of_the_batch_out(
        tmp_path: Path, process: CommitProcess) -> None:
    # The database's own error (here a table that is not there) is every message's:
    # none is tried again alone, and none stays in new/ without its record.
    (tmp_path / "db").write_bytes(b"")
    maildir = Maildir(tmp_path / "mail", commit_process=process)
    maildir.create()
    maildir.records = RecordsInDatabase(
        Database(str(tmp_path / "db"), ("PRAGMA foreign_keys=ON",), 1.0),
        lambda writer: [("INSERT INTO missing VALUES (?)", [(writer.name,)])],
        lambda error: OSError(errno.EIO, f"{error.database} {error.text}"))
    failures: list[str] = []

    async def deliver(number: int) -> None:
        try:
            await maildir.deliver(b"message %d" % number)
        except OSError as exc:
            failures.append(str(exc))

    async with trio.open_nursery() as nursery:
        for number in range(5):
            nursery.start_soon(deliver, number)
    assert failures == ["[Errno 5] True no such table: missing"] * 5
    assert os.listdir(tmp_path / "mail" / "new") == []
    assert os.listdir(tmp_path / "mail" / "tmp") == []
