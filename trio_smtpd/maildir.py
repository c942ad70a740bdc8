"""Durable Maildir delivery that never blocks the trio event loop.

A message is written to ``tmp/``, fsynced, renamed into ``new/``, and ``new/`` itself is
fsynced, all in a worker thread; only then may the server say 250. A message that was not
fully written never appears in ``new/`` (the rename is atomic), and a crash leaves at most
a stray file in ``tmp/``, which Maildir readers ignore.

Concurrent deliveries share the fsync of ``new/`` (a group commit): a message waits for
the first fsync that starts after its rename, and one fsync covers every rename before
it. Under load that is one directory fsync per batch of messages instead of one each.

File names follow the Maildir convention (``time.MusecPpidQcountRrandom.host``) so that
several processes and hosts can deliver into one Maildir without colliding.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

__all__ = ["Maildir", "MaildirWriter"]

_counter = itertools.count(1)


def _safe_hostname() -> str:
    # Maildir reserves "/" and ":" in file names; encode them as the convention says.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


class Maildir:
    """A Maildir folder (created with tmp/, new/ and cur/ if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._host = _safe_hostname()
        self._new_sync = _GroupSync(self.path / "new")
        #: Told how long each message's fsyncs took, in seconds (for metrics): its
        #: ``"file"``, then ``"directory"`` (``new/``, shared by concurrent messages).
        #: Called in the worker thread that commits.
        self.on_fsync: Callable[[str, float], None] | None = None

    def create(self) -> None:
        """Create the folders and check that ``tmp/`` is writable (raises OSError)."""
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = self.path / "tmp" / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()

    def unique_name(self) -> str:
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return (f"{seconds}.M{micros}P{os.getpid()}Q{next(_counter)}"
                f"R{secrets.token_hex(8)}.{self._host}")

    def open(self) -> MaildirWriter:
        """Start a new message; ``write()`` it, then ``commit()`` or ``abort()``.

        Writes are buffered (up to ``MaildirWriter.BUFFER`` octets) so that a small message
        costs a single trip to a worker thread: create, write, fsync, rename, fsync.
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

    def __init__(self, maildir: Maildir, name: str) -> None:
        self.maildir = maildir
        self.name = name
        self.size = 0
        self._tmp = maildir.path / "tmp" / name
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._finished = False
        #: What the ``then`` given to ``commit()`` raised, if anything.
        self.then_error: Exception | None = None

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

    async def commit(self, then: Callable[[], None] | None = None) -> str:
        """Write the rest, fsync, move into ``new/``, fsync ``new/``: now it is durable.

        ``then`` runs next in the same worker thread (a trip saved), once the message is
        durable. The message is stored whatever it does: an exception it raises is kept
        in ``then_error`` rather than raised.
        """
        if self._finished:
            raise ValueError("message already committed or aborted")
        self._finished = True
        # Shielded: once started, finishing the rename matters more than a cancel.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self._commit_then, then)
            except BaseException:
                await trio.to_thread.run_sync(self._discard)
                raise
        return self.name

    def _commit_then(self, then: Callable[[], None] | None) -> None:
        self._commit()
        if then is not None:
            try:
                then()
            except Exception as exc:
                self.then_error = exc

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
        _write_all(self._fd, data)

    def _prepend_to_file(self, data: bytes) -> None:
        self._flush()
        assert self._fd is not None
        front = self._tmp.with_name(self._tmp.name + ".prepend")
        fd = os.open(front, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
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

    def _commit(self) -> None:
        self._flush()
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            self._timed("file", partial(os.fsync, fd))
        finally:
            os.close(fd)
        os.rename(self._tmp, self.maildir.path / "new" / self.name)
        self._timed("directory", self.maildir._new_sync.sync)

    def _timed(self, what: str, fsync: Callable[[], object]) -> None:
        """``fsync()``, its time told to the Maildir's ``on_fsync`` if it has one: one
        commit sequence, timed or not, so that one test guards its order (issue 23)."""
        on_fsync = self.maildir.on_fsync
        if on_fsync is None:
            fsync()
            return
        started = time.monotonic()
        fsync()
        on_fsync(what, time.monotonic() - started)

    def _discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tmp.unlink(missing_ok=True)


class _GroupSync:
    """fsync of a directory, shared by every thread that asks while one is under way.

    ``sync()`` returns once an fsync that *started* after the call has succeeded: any
    such fsync covers the caller's rename. Threads that arrive during an fsync wait, and
    the next fsync (done by one of them) covers them all.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._changed = threading.Condition()
        self._started = 0  # fsyncs begun (they run one at a time, in order)
        self._finished = 0  # the number of the last one done
        self._succeeded = 0  # the number of the last one that succeeded
        self._running = False
        self._error: OSError | None = None  # of the last one that failed

    def sync(self) -> None:
        with self._changed:
            needed = self._started + 1  # the first fsync to begin after this point
            while self._finished < needed:
                if self._running:
                    self._changed.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                self._changed.release()
                error: OSError | None = None
                try:
                    _fsync_directory(self._path)
                except OSError as exc:
                    error = exc
                finally:
                    self._changed.acquire()
                    self._running = False
                    self._finished = number
                    if error is None:
                        self._succeeded = number
                    else:
                        self._error = error
                    self._changed.notify_all()
            if self._succeeded < needed:
                assert self._error is not None
                raise self._error


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
        _write_all(target, block)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
