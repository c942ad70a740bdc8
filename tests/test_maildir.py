"""Durable Maildir delivery."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from trio_smtpd.maildir import CommitProcess, Maildir, MaildirWriter
from trio_smtpd.sinkhole.hashstore import HashedWriter

MaildirFactory = Callable[[Path], Maildir]


@pytest.fixture(params=["in-thread", "commit-process"])
def new_maildir(request: pytest.FixtureRequest) -> Iterator[MaildirFactory]:
    """Maildirs whose batches are committed in their own worker thread, or by a commit
    process: the same behaviour either way."""
    process = CommitProcess() if request.param == "commit-process" else None
    yield partial(Maildir, commit_process=process)
    if process is not None:
        process.close()


async def test_deliver_writes_into_new_only(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    maildir = new_maildir(tmp_path / "mail")
    maildir.create()
    name = await maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    assert (tmp_path / "mail" / "new" / name).read_bytes() == b"Subject: x\r\n\r\nbody\r\n"
    assert os.listdir(tmp_path / "mail" / "tmp") == []
    assert os.listdir(tmp_path / "mail" / "cur") == []


async def test_names_are_unique_and_follow_the_convention(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    maildir = new_maildir(tmp_path)
    maildir.create()
    names = set()
    async with trio.open_nursery() as nursery:
        async def one() -> None:
            names.add(await maildir.deliver(b"x"))
        for _ in range(50):
            nursery.start_soon(one)
    assert len(names) == 50
    for name in names:
        seconds, rest = name.split(".", 1)
        assert seconds.isdigit() and rest.startswith("M") and f"P{os.getpid()}Q" in rest
        assert "/" not in name and ":" not in name


async def test_streamed_writer_commit_and_abort(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    maildir = new_maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    writer.BUFFER = 4  # force a real write before the commit
    await writer.write(b"part one, ")
    assert os.listdir(tmp_path / "tmp") == [writer.name]
    assert os.listdir(tmp_path / "new") == []  # not visible until committed
    await writer.write(b"part two")
    name = await writer.commit()
    assert (tmp_path / "new" / name).read_bytes() == b"part one, part two"
    aborted = maildir.open()
    await aborted.write(b"never delivered")
    await aborted.abort()
    assert os.listdir(tmp_path / "new") == [name]
    assert os.listdir(tmp_path / "tmp") == []
    with pytest.raises(ValueError):
        await aborted.write(b"more")


def test_create_fails_on_unwritable_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = tmp_path / "file"
        target.write_bytes(b"")  # a file where the Maildir should be: fails even for root
        with pytest.raises(OSError):
            Maildir(target / "mail").create()
    else:
        tmp_path.chmod(0o500)
        with pytest.raises(OSError):
            Maildir(tmp_path / "mail").create()


async def test_concurrent_commits_share_directory_fsyncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every commit must return after an fsync of new/ that began after its rename;
    # the commits that come while a batch is in its worker thread go together in the
    # next one, with one fsync of new/.
    import trio_smtpd.maildir as maildir_module

    clock = itertools.count()
    renamed: dict[str, int] = {}
    started: list[int] = []
    fsyncs: list[tuple[int, int]] = []  # (start, end) ticks of each fsync of new/
    gate = threading.Event()
    real_rename = os.rename

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_rename(src, dst)
        renamed[Path(dst).name] = next(clock)

    def slow_fsync(path: Path) -> None:
        start = next(clock)
        started.append(start)
        gate.wait(10)
        fsyncs.append((start, next(clock)))

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(maildir_module, "_fsync_directory", slow_fsync)
    maildir = Maildir(tmp_path)
    maildir.create()
    returned: dict[str, int] = {}

    async def deliver(number: int) -> None:
        writer = maildir.open()
        await writer.write(b"message %d\r\n" % number)
        name = await writer.commit()
        returned[name] = next(clock)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver, 0)
        with trio.fail_after(10):  # one batch at its fsync, then the rest waiting
            while not started:
                await trio.sleep(0.01)
            for number in range(1, 20):
                nursery.start_soon(deliver, number)
            while len(maildir._commits._pending) < 19:
                await trio.sleep(0.01)
        assert returned == {}
        gate.set()
    assert len(returned) == 20 and set(returned) == set(renamed)
    assert len(fsyncs) == 2  # the held one, and one for all who waited for it
    for name, done in returned.items():
        assert any(renamed[name] < start and end < done for start, end in fsyncs), name


async def test_a_failed_directory_fsync_fails_the_commits_it_covers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio_smtpd.maildir as maildir_module

    def failing(path: Path) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(maildir_module, "_fsync_directory", failing)
    maildir = Maildir(tmp_path / "mail")
    maildir.create()
    failures: list[int | None] = []

    async def deliver() -> None:
        writer = maildir.open()
        await writer.write(b"x")
        with pytest.raises(OSError) as info:
            await writer.commit()
        failures.append(info.value.errno)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(deliver)
    assert failures == [errno.EIO] * 5
    assert os.listdir(tmp_path / "mail" / "tmp") == []


async def test_a_message_that_fails_in_a_batch_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    maildir = Maildir(tmp_path)
    maildir.create()
    writers = [maildir.open() for _ in range(3)]
    for number, writer in enumerate(writers):
        await writer.write(b"message %d\r\n" % number)
    doomed = writers[1].name
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(doomed):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    errors = maildir._commit_batch(writers)  # (as one batch, in this thread)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], OSError) and errors[1].errno == errno.EIO
    assert sorted(os.listdir(tmp_path / "new")) == sorted([writers[0].name,
                                                           writers[2].name])
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("copy_file_range", ["kernel", "fallback"])
async def test_prepend_before_and_after_the_buffer_is_flushed(
        new_maildir: MaildirFactory, tmp_path: Path, copy_file_range: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if copy_file_range == "fallback":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    maildir = new_maildir(tmp_path)
    maildir.create()
    small = maildir.open()
    await small.write(b"body\r\n")
    await small.prepend(b"A: 1\r\n")
    assert (tmp_path / "new" / await small.commit()).read_bytes() == b"A: 1\r\nbody\r\n"
    large = maildir.open()
    body = os.urandom(3 * large.BUFFER + 5)  # written out to tmp/ three times already
    for start in range(0, len(body), 65536):
        await large.write(body[start:start + 65536])
    assert os.listdir(tmp_path / "tmp") == [large.name]
    await large.prepend(b"A: 2\r\n")
    await large.write(b"tail")
    assert os.listdir(tmp_path / "tmp") == [large.name]  # (the copy replaced it)
    name = await large.commit()
    assert (tmp_path / "new" / name).read_bytes() == b"A: 2\r\n" + body + b"tail"
    assert large.size == len(body) + 10 and os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("hashed", [False, True], ids=["named", "hash-named"])
@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
async def test_commit_order_is_fsync_rename_fsync_directory_then_return(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashed: bool, timed: bool) -> None:
    # A 250 may only follow a commit that returned; a message is durable only if its data
    # was fsynced before the rename made it visible, and the rename itself (the directory)
    # was fsynced after it. A crash between any two of these steps must lose nothing
    # that was acknowledged. Every commit path is held to it (issue 23): the timed one
    # (Maildir.on_fsync, the sinkhole with --metrics-listen) and the hash-named one
    # (--save-hash, which links instead of renaming).
    maildir = Maildir(tmp_path)
    maildir.create()
    body = b"Subject: durable\r\n\r\n" + b"x" * 5000 + b"\r\n"
    steps: list[tuple[str, ...]] = []
    real_fsync, real_rename, real_link = os.fsync, os.rename, os.link

    def fsync(fd: int) -> None:
        # What the descriptor is, and how much of the message it holds, right now.
        info = os.fstat(fd)
        held = str(info.st_size) if stat.S_ISREG(info.st_mode) else "directory"
        steps.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), held))
        real_fsync(fd)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        steps.append(("rename", os.fspath(src), os.fspath(dst)))
        real_rename(src, dst)

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        steps.append(("rename", os.fspath(src), os.fspath(dst)))  # as good as one here
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "link", link)
    if timed:
        maildir.on_fsync = lambda what, _seconds: steps.append(("timed", what))
    writer = HashedWriter(maildir, "msg") if hashed else maildir.open()
    await writer.write(body)
    if isinstance(writer, HashedWriter):
        writer.name_it(hashlib.sha256(body).hexdigest())
    name = await writer.commit()
    steps.append(("returned",))
    tmp, new = steps[0][1], str(tmp_path / "new" / name)
    assert Path(tmp).parent == tmp_path / "tmp"
    expected = [
        ("fsync", tmp, str(len(body))),  # the whole message, while still in tmp/
        ("timed", "file"),
        ("rename", tmp, new),
        ("fsync", str(tmp_path / "new"), "directory"),
        ("timed", "directory"),
        ("returned",),
    ]
    assert steps == [step for step in expected if timed or step[0] != "timed"]
    assert (tmp_path / "new" / name).read_bytes() == body
    assert os.listdir(tmp_path / "tmp") == []


# What a Maildir promises beyond delivery itself: names readers can parse, files only we
# can read, nothing clobbered, nothing left in tmp/, and a commit that a cancellation
# cannot interrupt halfway.


def test_file_names_carry_time_microseconds_and_an_encoded_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio_smtpd.maildir as maildir_module

    monkeypatch.setattr(maildir_module.socket, "gethostname", lambda: "mx/1:a")
    monkeypatch.setattr(maildir_module.time, "time", lambda: 1700000000.999999)
    name = Maildir(tmp_path).unique_name()
    # time.MusecPpidQcountRrandom.host, with "/" and ":" in the host written as octal.
    # (.999999: the microseconds are truncated, never rounded up to a whole second)
    pattern = rf"1700000000\.M999999P{os.getpid()}Q\d+R[0-9a-f]{{16}}\.mx\\0571\\072a"
    assert re.fullmatch(pattern, name), name


def test_create_is_idempotent_and_private(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "mail")
    maildir.create()
    maildir.create()  # an existing Maildir is fine
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE(os.stat(tmp_path / "mail" / sub).st_mode) == 0o700
    assert os.listdir(tmp_path / "mail" / "tmp") == []  # the writability probe is gone


async def test_messages_are_private_and_sizes_add_up(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    maildir = new_maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    for part in (b"one ", b"two ", b"three"):
        await writer.write(part)
    assert writer.size == len(b"one two three")
    name = await writer.commit()
    assert (tmp_path / "new" / name).read_bytes() == b"one two three"
    assert stat.S_IMODE(os.stat(tmp_path / "new" / name).st_mode) == 0o600


async def test_writes_reach_the_file_once_the_buffer_is_full(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    maildir = new_maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    writer.BUFFER = 10
    tmp = tmp_path / "tmp" / writer.name
    await writer.write(b"123456789")
    assert not tmp.exists()  # 9 octets: still buffered
    await writer.write(b"0")
    assert tmp.read_bytes() == b"1234567890"  # 10: written
    await writer.write(b"abcdefghi")
    assert tmp.read_bytes() == b"1234567890"  # the buffer starts again from empty
    await writer.write(b"j")
    assert tmp.read_bytes() == b"1234567890abcdefghij"
    assert writer.size == 20
    name = await writer.commit()
    assert (tmp_path / "new" / name).read_bytes() == b"1234567890abcdefghij"


async def test_a_finished_writer_refuses_more(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    maildir = new_maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    await writer.commit()
    message = r"^message already committed or aborted$"
    with pytest.raises(ValueError, match=message):
        await writer.write(b"x")
    with pytest.raises(ValueError, match=message):
        await writer.commit()


async def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    writer.BUFFER = 1
    (tmp_path / "tmp" / writer.name).write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        await writer.write(b"ours")
    assert (tmp_path / "tmp" / writer.name).read_bytes() == b"someone else's"


async def test_aborting_after_a_write_closes_and_removes_the_file(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    writer.BUFFER = 1
    await writer.write(b"partial")
    fds = len(os.listdir("/proc/self/fd"))
    await writer.abort()
    assert len(os.listdir("/proc/self/fd")) == fds - 1
    assert os.listdir(tmp_path / "tmp") == [] and os.listdir(tmp_path / "new") == []


async def test_a_failed_commit_leaves_nothing_and_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    maildir = Maildir(tmp_path)
    maildir.create()
    writer = maildir.open()
    await writer.write(b"doomed")
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError) as info:
        await writer.commit()
    assert info.value.errno == errno.EIO
    assert os.listdir(tmp_path / "tmp") == [] and os.listdir(tmp_path / "new") == []


async def test_cancellation_does_not_interrupt_a_commit_or_an_abort(
        new_maildir: MaildirFactory, tmp_path: Path) -> None:
    # Once a commit has begun, finishing the rename matters more than the cancel; an abort
    # must still remove its file. Both run in already-cancelled scopes here.
    maildir = new_maildir(tmp_path)
    maildir.create()
    committed, aborted = maildir.open(), maildir.open()
    aborted.BUFFER = 1
    await committed.write(b"keep me")
    await aborted.write(b"drop me")
    names = []
    with trio.CancelScope() as scope:
        scope.cancel()
        names.append(await committed.commit())
        await aborted.abort()
    assert len(names) == 1 and os.listdir(tmp_path / "new") == names
    assert os.listdir(tmp_path / "tmp") == []


async def test_after_commit_follows_the_fsync_of_new_and_can_fail_one_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What follows a batch (the sinkhole's records) comes once its messages are durable,
    # in the same worker thread, and may refuse one of them alone.
    import trio_smtpd.maildir as maildir_module

    steps: list[object] = []
    real_fsync_directory = maildir_module._fsync_directory

    def fsync_directory(path: Path) -> None:
        steps.append("fsync new/")
        real_fsync_directory(path)

    def after(published: list[MaildirWriter]) -> list[OSError | None]:
        steps.append(("after", [writer.record for writer in published]))
        return [OSError(errno.EIO, "no record") if writer.record == 1 else None
                for writer in published]

    monkeypatch.setattr(maildir_module, "_fsync_directory", fsync_directory)
    maildir = Maildir(tmp_path)
    maildir.create()
    maildir.after_commit = after
    writers = [maildir.open() for _ in range(3)]
    for number, writer in enumerate(writers):
        await writer.write(b"message %d\r\n" % number)
        writer.record = number
    errors = maildir._commit_batch(writers)  # (as one batch, in this thread)
    assert steps == ["fsync new/", ("after", [0, 1, 2])]
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], OSError) and errors[1].errno == errno.EIO
    lone = maildir.open()
    await lone.write(b"alone\r\n")
    lone.record = 1
    with pytest.raises(OSError, match="no record"):
        await lone.commit()
