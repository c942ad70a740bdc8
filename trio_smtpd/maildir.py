"""Durable Maildir delivery that never blocks the trio event loop.

A message is written to ``tmp/``, fsynced, renamed into ``new/``, and ``new/`` itself is
fsynced, in a worker thread; only then may the server say 250. A message that was not
fully written never appears in ``new/`` (the rename is atomic), and a crash leaves at most
a stray file in ``tmp/``, which Maildir readers ignore.

Concurrent deliveries are committed together (a group commit, ``_groupcommit``): the
messages that come to be committed while a batch is in its worker thread go in the next
batch. A batch writes out each message's file, then fsyncs each (on a file system with a
journal, the first fsync commits the others' metadata with its own, and theirs find little
left to do), renames each into ``new/``, and fsyncs ``new/`` once for them all. One worker
thread goes from batch to batch while commits keep coming, and the event loop is woken
once per batch rather than once per message: in a Python process the handover of each
trip (its thread, the GIL, the event loop's wake-up) costs more than the file system's
work for a small message (benchmarks/README.md, "Commits in batches, measured
properly" and "A worker that goes from batch to batch").

With a commit process (``Maildir(path, commit_process=CommitProcess())``, what the
sinkhole does), the batch's thread hands the file work (write out, fsyncs, renames, the
fsync of ``new/``) to that helper process and waits for its answer: the same steps in
the same order, without the dozen returns from system calls per message that each wait
for the GIL the event loop holds (``_commitprocess``). The records then written
(``after_commit``) run in the batch's thread, unless they are rows of an SQLite
database (``records``): the commit process writes those too, once the files are
durable, and takes back out of ``new/`` a message whose row it could not write. A
``MaildirWriter`` subclass with commit steps of its own says so
(``commits_elsewhere = False``) and is committed in the batch's thread, as is every
batch once the commit process is closed or could not be started.

File names follow the Maildir convention (``time.MusecPpidQcountRrandom.host``) so that
several processes and hosts can deliver into one Maildir without colliding.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import trio

from ._commitprocess import (
    CommitProcess,
    Database,
    FileCommit,
    FileOutcome,
    RecordError,
    Records,
    Statement,
    Unavailable,
    write_all,
)
from ._commitprocess import fsync_directory as _fsync_directory  # (tests replace it)
from ._groupcommit import GroupCommit

__all__ = ["CommitProcess", "Maildir", "MaildirWriter", "RecordsInDatabase"]

_counter = itertools.count(1)

#: ``Maildir.after_commit``: for each message, None or what failed it.
AfterCommit = Callable[[list["MaildirWriter"]], Sequence[OSError | None]]


def _safe_hostname() -> str:
    # Maildir reserves "/" and ":" in file names; encode them as the convention says.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


@dataclass(frozen=True)
class RecordsInDatabase:
    """Each message's records as SQL statements (``statements(writer)``, run in
    ``database`` once the message is durable) and the exception that fails a message
    whose records were not written (``error``)."""

    database: Database
    statements: Callable[[MaildirWriter], list[Statement]]
    error: Callable[[RecordError], OSError]


class Maildir:
    """A Maildir folder (created with tmp/, new/ and cur/ if missing)."""

    def __init__(self, path: str | os.PathLike[str], *,
                 commit_process: CommitProcess | None = None) -> None:
        self.path = Path(path)
        #: Where the batches' file work is done, if not in their own worker thread
        #: (see the module's docstring); it may serve several Maildirs.
        self.commit_process = commit_process
        self._host = _safe_hostname()
        self._commits = GroupCommit[MaildirWriter](self._commit_batch)
        #: Told how long each message's fsyncs took, in seconds (for metrics): its
        #: ``"file"``, then ``"directory"`` (``new/``, shared by the messages of a batch).
        #: Called in the worker thread that commits.
        self.on_fsync: Callable[[str, float], None] | None = None
        #: What must follow a batch's messages and never precede them (the sinkhole's
        #: records of them), done in the batch's worker thread without a trip of its
        #: own: called, once they are durable, with those put into ``new/``; returns
        #: for each None or the exception that fails its commit (and then takes it
        #: back out of ``new/`` if it must not stay).
        self.after_commit: AfterCommit | None = None
        #: The same records as rows of an SQLite database, for a commit process to
        #: write in place of ``after_commit`` once it has made the batch's files
        #: durable (then the batch's thread writes none).
        self.records: RecordsInDatabase | None = None

    def create(self) -> None:
        """Create the folders and check that ``tmp/`` is writable (raises OSError)."""
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = self.path / "tmp" / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()

    def _commit_batch(self, writers: list[MaildirWriter]) -> list[OSError | None]:
        """In a worker thread: commit ``writers``; for each, None or what failed it."""
        process = self.commit_process
        if process is not None and process.usable and all(
                w.commits_elsewhere for w in writers):
            with suppress(Unavailable):  # (then nothing was done: it is done here)
                return self._commit_in(process, writers)
        return self._follow(writers, self._commit_here(writers))

    def _follow(self, writers: list[MaildirWriter], errors: list[OSError | None]
                ) -> list[OSError | None]:
        """``after_commit`` for those of ``writers`` now in ``new/``."""
        published = [w for w, e in zip(writers, errors, strict=True)
                     if e is None and w.published]
        if not published or self.after_commit is None:
            return errors
        outcomes = dict(zip(map(id, published), self.after_commit(published), strict=True))
        return [outcomes.get(id(w), e) for w, e in zip(writers, errors, strict=True)]

    def _commit_here(self, writers: list[MaildirWriter]) -> list[OSError | None]:
        """In this thread, step by step across the batch, so that one message's failure
        fails it alone (it is discarded) and the others' fsyncs follow one another on
        the disk; then one fsync of ``new/``."""
        errors: list[OSError | None] = [None] * len(writers)
        for step in ("_write_out", "_fsync", "_publish"):  # (a subclass's own, if it has)
            for index, writer in enumerate(writers):
                if errors[index] is None:
                    try:
                        getattr(writer, step)()
                    except OSError as exc:
                        errors[index] = exc
                        writer._discard()
        published = [w for w, e in zip(writers, errors, strict=True)
                     if e is None and w.published]
        if published:
            try:
                self._timed_for(published, "directory",
                                partial(_fsync_directory, self.path / "new"))
            except OSError as exc:  # (the files stay in new/: a 451 may make a duplicate)
                return [exc if w.published else e
                        for w, e in zip(writers, errors, strict=True)]
        return errors

    def _commit_in(self, process: CommitProcess, writers: list[MaildirWriter]
                   ) -> list[OSError | None]:
        """The same steps, done by the commit process (``_commitprocess``), then the
        records: written by it too (``records``), or else here (``after_commit``).
        Raises Unavailable, and then has done nothing."""
        records = self.records
        errors: list[OSError | None] = [None] * len(writers)
        groups: list[list[Statement]] = []
        if records is not None:
            for index, writer in enumerate(writers):
                try:
                    groups.append(records.statements(writer))
                except Exception as exc:  # (a message that makes no record: never a 250)
                    errors[index] = records.error(RecordError(None, repr(exc), False))
        going = [w for w, e in zip(writers, errors, strict=True) if e is None]
        try:
            outcomes = process.commit(
                str(self.path / "new"), [w._commit_request() for w in going],
                None if records is None else Records(records.database, groups))
        except Unavailable:
            raise
        except OSError as exc:
            for writer in writers:
                writer._discard()
            return [exc] * len(writers)
        results = dict(zip(map(id, going), outcomes, strict=True))
        for index, writer in enumerate(writers):
            outcome = results.get(id(writer))
            if outcome is None:  # (its statements failed: it was not sent)
                writer._discard()
                continue
            errors[index] = self._settle(writer, outcome)
        return errors if records is not None else self._follow(writers, errors)

    def _settle(self, writer: MaildirWriter, outcome: FileOutcome) -> OSError | None:
        """What became of ``writer`` in the commit process, told to it and the metrics."""
        error = writer._committed_elsewhere(outcome.error)
        if outcome.error is not None:
            return error
        self._tell_fsync(outcome)
        if outcome.record_error is None:
            return None
        writer.published = False  # (the commit process took it back out of new/)
        assert self.records is not None
        return self.records.error(outcome.record_error)

    def _tell_fsync(self, outcome: FileOutcome) -> None:
        on_fsync = self.on_fsync
        if on_fsync is not None and outcome.fsync_seconds is not None:
            on_fsync("file", outcome.fsync_seconds)
            if outcome.directory_seconds is not None:
                on_fsync("directory", outcome.directory_seconds)

    def _timed_for(self, writers: list[MaildirWriter], what: str,
                   fsync: Callable[[], object]) -> None:
        """``fsync()``, its time told to ``on_fsync`` (if set) once for each of
        ``writers``: one commit sequence, timed or not, so that one test guards its
        order (issue 23)."""
        on_fsync = self.on_fsync
        if on_fsync is None:
            fsync()
            return
        started = time.monotonic()
        fsync()
        seconds = time.monotonic() - started
        for _ in writers:
            on_fsync(what, seconds)

    def unique_name(self) -> str:
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return (f"{seconds}.M{micros}P{os.getpid()}Q{next(_counter)}"
                f"R{secrets.token_hex(8)}.{self._host}")

    def open(self) -> MaildirWriter:
        """Start a new message; ``write()`` it, then ``commit()`` or ``abort()``.

        Writes are buffered (up to ``MaildirWriter.BUFFER`` octets) so that a small message
        is created, written, fsynced and renamed in its commit's batch, with no trip of
        its own to a worker thread.
        The buffer is small (32 KiB) because every connection in DATA holds one: with a
        megabyte each, 400 clients that never send the final dot held 400 MB.
        """
        return MaildirWriter(self, self.unique_name())

    async def deliver(self, data: bytes) -> str:
        """Store one whole message durably; return its file name in ``new/``."""
        writer = self.open()
        await writer.write(data)
        return await writer.commit()


class MaildirWriter:
    """One message on its way into ``new/``."""

    #: Octets kept before the first write to ``tmp/`` (and between writes): one
    #: connection's worth of memory for a message on its way.
    BUFFER = 32 * 1024
    #: Whether a commit process can commit it: it is written out, fsynced and renamed
    #: as here (a subclass with steps of its own is committed in its batch's thread).
    commits_elsewhere: ClassVar[bool] = True

    def __init__(self, maildir: Maildir, name: str) -> None:
        self.maildir = maildir
        self.name = name
        self.size = 0
        self._tmp = maildir.path / "tmp" / name
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._finished = False
        #: Whether the commit put the file in ``new/`` (a hash-named one may not).
        self.published = False
        #: What ``Maildir.after_commit`` is to know of this message (None by default).
        self.record: Any = None

    async def write(self, data: bytes) -> None:
        if self._finished:
            raise ValueError("message already committed or aborted")
        self._pending.append(data)
        self._pending_size += len(data)
        self.size += len(data)
        if self._pending_size >= self.BUFFER:
            await trio.to_thread.run_sync(self._flush)

    async def prepend(self, data: bytes) -> None:
        """Put ``data`` in front of everything written so far: header fields known only
        once the message has ended (authentication results). Free while the message
        is still in the write buffer; after that, the file is rewritten with ``data``
        in front, its old content copied by the kernel (``copy_file_range``), never
        through this process's memory."""
        if self._finished:
            raise ValueError("message already committed or aborted")
        self.size += len(data)
        if self._fd is None:
            self._pending.insert(0, data)
            self._pending_size += len(data)
            return
        await trio.to_thread.run_sync(self._prepend_to_file, data)

    async def commit(self) -> str:
        """Write the rest, fsync, move into ``new/``, fsync ``new/``: now it is durable.

        Done in a batch with the other messages being committed (see the module's
        docstring); it cannot be cancelled once begun. Raises OSError, and then nothing
        of the message is left in ``tmp/``."""
        if self._finished:
            raise ValueError("message already committed or aborted")
        self._finished = True
        try:
            await self.maildir._commits(self)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._discard)
            raise
        return self.name

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._pending.clear()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._discard)

    # These run in a worker thread.

    def _flush(self) -> None:
        if self._fd is None:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o600)
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        write_all(self._fd, data)

    def _prepend_to_file(self, data: bytes) -> None:
        self._flush()
        assert self._fd is not None
        front = self._tmp.with_name(self._tmp.name + ".prepend")
        fd = os.open(front, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data)
            source = os.open(self._tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _copy(source, fd)
            finally:
                os.close(source)
            os.rename(front, self._tmp)  # (same name in tmp/: nothing else sees it)
        except BaseException:
            os.close(fd)
            front.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd

    # The steps of a commit, in its batch's worker thread (Maildir._commit_batch).

    def _write_out(self) -> None:
        self._flush()

    def _fsync(self) -> None:
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            self.maildir._timed_for([self], "file", partial(os.fsync, fd))
        finally:
            os.close(fd)

    def _publish(self) -> None:
        os.rename(self._tmp, self.maildir.path / "new" / self.name)
        self.published = True

    def _commit_request(self) -> FileCommit:
        """What the commit process is to do (the buffer is kept until it has done it:
        a helper that cannot start leaves the commit to this process)."""
        return FileCommit(str(self._tmp), str(self.maildir.path / "new" / self.name),
                          b"".join(self._pending), self._fd)

    def _committed_elsewhere(self, error: tuple[int, str] | None) -> OSError | None:
        """Its outcome from the commit process: None once it is in ``new/``."""
        self._pending.clear()
        self._pending_size = 0
        if error is None:
            self.published = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return None
        self._discard()
        return OSError(*error)

    def _discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tmp.unlink(missing_ok=True)


def _copy(source: int, target: int) -> None:
    """All of ``source`` onto the end of ``target``, inside the kernel where it can."""
    copy_range = getattr(os, "copy_file_range", None)
    while copy_range is not None:
        try:
            if copy_range(source, target, 1 << 30) == 0:
                return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            copy_range = None  # a file system that cannot: copy below from where it got
    while block := os.read(source, 1 << 20):
        write_all(target, block)
