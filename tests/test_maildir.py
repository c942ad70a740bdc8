"""Durable Maildir delivery."""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from pathlib import Path

import pytest
import trio

from trio_smtpd.maildir import Maildir


async def test_deliver_writes_into_new_only(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "mail")
    maildir.create()
    name = await maildir.deliver(b"Subject: x\r\n\r\nbody\r\n")
    assert (tmp_path / "mail" / "new" / name).read_bytes() == b"Subject: x\r\n\r\nbody\r\n"
    assert os.listdir(tmp_path / "mail" / "tmp") == []
    assert os.listdir(tmp_path / "mail" / "cur") == []


async def test_names_are_unique_and_follow_the_convention(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path)
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


async def test_streamed_writer_commit_and_abort(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path)
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


def test_concurrent_commits_share_directory_fsyncs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Every sync() must return after an fsync that began after it was called; while one
    # fsync runs, the callers that arrive share the next one.
    import trio_smtpd.maildir as maildir_module

    clock = itertools.count()
    fsyncs: list[tuple[int, int]] = []  # (start, end) ticks of each fsync
    gate = threading.Event()

    def slow_fsync(path: Path) -> None:
        start = next(clock)
        gate.wait(5)
        fsyncs.append((start, next(clock)))

    monkeypatch.setattr(maildir_module, "_fsync_directory", slow_fsync)
    group = maildir_module._GroupSync(tmp_path)
    calls: list[tuple[int, int]] = []  # (called, returned) ticks of each sync()

    def caller() -> None:
        called = next(clock)
        group.sync()
        calls.append((called, next(clock)))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # one fsync is under way, the others wait for the next
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 20
    assert len(fsyncs) < 10
    for called, returned in calls:
        assert any(called < start and end < returned for start, end in fsyncs)


def test_a_failed_directory_fsync_fails_the_commits_it_covers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio_smtpd.maildir as maildir_module

    def failing(path: Path) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(maildir_module, "_fsync_directory", failing)
    maildir = Maildir(tmp_path / "mail")
    maildir.create()
    writer = maildir.open()
    writer._pending.append(b"x")
    with pytest.raises(OSError) as info:
        writer._commit()
    assert info.value.errno == errno.EIO


@pytest.mark.parametrize("copy_file_range", ["kernel", "fallback"])
async def test_prepend_before_and_after_the_buffer_is_flushed(
        tmp_path: Path, copy_file_range: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if copy_file_range == "fallback":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    maildir = Maildir(tmp_path)
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
