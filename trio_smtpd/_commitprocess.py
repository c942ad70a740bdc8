"""A helper process that does the file work of Maildir commit batches: both its ends.

The server's process sends a batch (each message's name in ``tmp/``, its name in
``new/``, the octets still in its write buffer, and the descriptor of a file already
begun) over a socket pair; the helper writes each file out, fsyncs each, renames each
into ``new/``, fsyncs ``new/`` once, then writes the records that go with the files
(rows of an SQLite database, if the batch has any: ``write_records``, which the
server's process also uses when it writes them itself), and answers with each
message's outcome and the fsyncs' durations. In the server's process, the thread of
the batch only waits for that answer. Done there, the same work was a dozen trips out
of the GIL and back for each message, each one waiting for the event loop's thread to
let go of it: the commit thread and the event loop slowed each other down
(benchmarks/README.md, "Round 5").

The helper runs this file as a script, with the standard library alone: ``python -I``
puts neither the package nor anything from the environment on its path. It ignores
the signals that stop the server (the server ends it by closing its socket; a batch
under way is finished first), and ends when that socket closes, however the server's
process ended: nothing is left running after it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import pickle
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

__all__ = ["CommitProcess", "Database", "FileCommit", "FileOutcome", "RecordError", "Records",
           "Statement", "Unavailable", "fsync_directory", "write_all", "write_records"]

#: Descriptors in one request: below the kernel's limit for one message (253).
MAX_FDS = 200
_LENGTH = struct.Struct("!I")
_READY = "ready"


class FileCommit(NamedTuple):
    """One message of a batch: ``data`` goes at the end of the file in ``tmp`` (the
    file ``fd`` has open, or a new one if it is None), which is then fsynced and
    renamed to ``final``."""

    tmp: str
    final: str
    data: bytes
    fd: int | None


class FileOutcome(NamedTuple):
    """What became of one ``FileCommit``: ``error`` is None once the file is in
    ``new/`` and ``new/`` is fsynced; else ``(errno, text)``, and ``tmp`` is gone.
    ``record_error`` says why its records were not written, if they were not: then
    the file has been taken back out of ``new/``."""

    error: tuple[int, str] | None
    fsync_seconds: float | None  # of the file, if it got that far
    directory_seconds: float | None  # of ``new/``, shared by the batch
    record_error: RecordError | None = None


#: One SQL statement and the parameters of each time it runs (``executemany``).
Statement = tuple[str, list[tuple[Any, ...]]]


class Database(NamedTuple):
    """Where records go: an SQLite file, the statements each new connection runs first
    (its PRAGMAs), and how long a write waits for another writer, in seconds."""

    path: str
    setup: tuple[str, ...]
    timeout: float


class RecordError(NamedTuple):
    """Why a file's records were not written: SQLite's extended error code (None
    when the error is not the database's: a value it cannot store) and its text."""

    code: int | None
    text: str
    database: bool  # whether it is the database's own (busy, full, I/O, ...)


class Records(NamedTuple):
    """A batch's records: the statements that record each file, in ``database``."""

    database: Database
    groups: list[list[Statement]]


class Unavailable(OSError):
    """The helper could not be started: nothing of the batch was sent to it."""


class CommitProcess:
    """The server's end: one helper process, started at the first batch and again
    after one ended, used by one batch at a time (it may serve several Maildirs).

    ``commit()`` blocks (call it from a worker thread); ``close()`` ends the helper and
    makes ``usable`` False, so that what comes later is committed in its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._closed = False

    @property
    def usable(self) -> bool:
        return not self._closed and bool(sys.executable)

    def commit(self, new_directory: str, files: list[FileCommit],
               records: Records | None = None) -> list[FileOutcome]:
        """Each file into ``new_directory``, then (if given) the records of those that
        are there, in one transaction (``write_records``). Raises Unavailable when the
        helper cannot be started (nothing was done: commit them elsewhere), OSError
        when it ends before it answers (then none of ``files`` counts as committed,
        though some may be in ``new/``; their ``tmp`` names are left to the caller)."""
        with self._lock:
            if self._closed:
                raise Unavailable(errno.EIO, "the commit process is closed")
            outcomes: list[FileOutcome] = []
            for start in range(0, len(files), MAX_FDS):
                part = None if records is None else records._replace(
                    groups=records.groups[start:start + MAX_FDS])
                try:
                    outcomes += self._request(new_directory, files[start:start + MAX_FDS],
                                              part)
                except Unavailable as exc:
                    if outcomes:  # (part of the batch is done: it cannot be done again)
                        raise OSError(exc.errno, exc.strerror) from None
                    raise
            return outcomes

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()

    def _request(self, new_directory: str, files: list[FileCommit],
                 records: Records | None) -> list[FileOutcome]:
        if self._process is not None and self._process.poll() is not None:
            self._stop()  # (it ended between batches: none of this batch was sent to it)
        sock = self._socket or self._start()
        try:
            # Plain tuples: the helper has no package to unpickle this module's types from.
            send_message(sock, (new_directory, [(f.tmp, f.final, f.data, f.fd is not None)
                                                for f in files],
                                None if records is None else (tuple(records.database),
                                                              records.groups)),
                         [f.fd for f in files if f.fd is not None])
            outcomes, _ = receive_message(sock)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._stop()  # (the next batch starts another)
            raise OSError(getattr(exc, "errno", None) or errno.EIO,
                          f"the commit process failed: {exc}") from None
        return [FileOutcome(error, fsync, directory,
                            None if record is None else RecordError(*record))
                for error, fsync, directory, record in outcomes]

    def _start(self) -> socket.socket:
        """Raises Unavailable (and is unusable from then on) if the helper does not
        start and say it is ready: this file may not be one Python can run (a zip),
        or the host may allow no more processes."""
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", __file__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)
            theirs.close()
            self._socket = ours
            if receive_message(ours)[0] != _READY:
                raise EOFError("an unexpected greeting")
        except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            theirs.close()
            ours.close()
            self._socket = None
            self._stop()
            self._closed = True
            raise Unavailable(errno.EIO, f"no commit process: {exc}") from None
        return ours

    def _stop(self) -> None:
        if self._socket is not None:
            self._socket.close()  # the helper's end of file: it finishes and exits
            self._socket = None
        if self._process is not None:
            process, self._process = self._process, None
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def send_message(sock: socket.socket, value: Any, fds: list[int]) -> None:
    """``value`` pickled, after its length; ``fds`` passed with its first octets."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    message = _LENGTH.pack(len(payload)) + payload
    ancillary = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                 if fds else [])
    sent = sock.sendmsg([message], ancillary)
    if sent < len(message):
        sock.sendall(message[sent:])


def receive_message(sock: socket.socket) -> tuple[Any, list[int]]:
    """A value ``send_message`` sent, and the descriptors that came with it; raises
    EOFError if the other end closed first."""
    fds: list[int] = []
    header = _receive_exactly(sock, _LENGTH.size, fds)
    (length,) = _LENGTH.unpack(header)
    return pickle.loads(_receive_exactly(sock, length, fds)), fds


def _receive_exactly(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        data, ancillary, _, _ = sock.recvmsg(min(left, 1 << 20),
                                             socket.CMSG_SPACE(MAX_FDS * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the other end closed")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


# The helper's end.

def commit_batch(new_directory: str, files: list[FileCommit], records: Records | None
                 ) -> list[tuple[Any, ...]]:
    """``commit_files``, then the records of the files it put into ``new/``; a file
    whose records fail is taken back out (never a file without its records)."""
    outcomes = commit_files(new_directory, files)
    recorded: list[RecordError | None] = [None] * len(files)
    done = [i for i, (error, _, _) in enumerate(outcomes) if error is None]
    if records is not None and done:
        written = _write_to(records.database, [records.groups[i] for i in done])
        for i, record_error in zip(done, written, strict=True):
            if record_error is not None:
                recorded[i] = record_error
                _attempt([None], 0, os.unlink, files[i].final)
    return [(*outcome, None if record is None else tuple(record))
            for outcome, record in zip(outcomes, recorded, strict=True)]


def commit_files(new_directory: str, files: list[FileCommit]
                 ) -> list[tuple[tuple[int, str] | None, float | None, float | None]]:
    """Write out, fsync, rename, then fsync ``new_directory``, step by step across the
    batch (as ``Maildir`` does in its own thread): one file's failure fails it alone."""
    errors: list[tuple[int, str] | None] = [None] * len(files)
    fsyncs: list[float | None] = [None] * len(files)
    fds = [_write_out(f, errors, i) for i, f in enumerate(files)]
    for i, fd in enumerate(fds):
        if fd is not None:
            fsyncs[i] = _fsync(fd, errors, i)
    for i, f in enumerate(files):
        if errors[i] is None:
            _attempt(errors, i, os.rename, f.tmp, f.final)
        if errors[i] is not None:
            _attempt([None], 0, os.unlink, f.tmp)  # (it may never have been made)
    directory = None
    if any(error is None for error in errors):
        failed: list[tuple[int, str] | None] = [None]
        started = time.monotonic()
        _attempt(failed, 0, fsync_directory, new_directory)
        directory = time.monotonic() - started
        errors = [failed[0] if error is None else error for error in errors]
    return [(error, fsync, directory) for error, fsync in zip(errors, fsyncs, strict=True)]


def _write_out(f: FileCommit, errors: list[tuple[int, str] | None], i: int) -> int | None:
    fd = f.fd
    try:
        if fd is None:
            fd = os.open(f.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        write_all(fd, f.data)
    except OSError as exc:
        errors[i] = _reason(exc)
        if fd is not None:
            os.close(fd)
        return None
    return fd


def _fsync(fd: int, errors: list[tuple[int, str] | None], i: int) -> float | None:
    started = time.monotonic()
    try:
        _attempt(errors, i, os.fsync, fd)
    finally:
        os.close(fd)
    return time.monotonic() - started if errors[i] is None else None


def _attempt(errors: list[tuple[int, str] | None], i: int, call: Any, *args: Any) -> None:
    try:
        call(*args)
    except OSError as exc:
        errors[i] = _reason(exc)


def _reason(exc: OSError) -> tuple[int, str]:
    """An OSError as the server's end rebuilds it (``OSError(*reason)``)."""
    return (exc.errno or errno.EIO, exc.strerror or str(exc))


# Both ends: the helper, and Maildir when it commits in its batch's own thread.

def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_records(connection: sqlite3.Connection, groups: list[list[Statement]]
                  ) -> list[RecordError | None]:
    """Run each group's statements, all in one transaction; for each group, None or
    why it was not written.

    If that transaction fails, one group could be the cause (a constraint, a value
    that cannot be stored), and one group's fault must not refuse the others: each is
    tried again in a transaction of its own. An OperationalError is the database's,
    not a group's (busy past the timeout, full, an I/O error): every group would meet
    it again, after as long a wait, so they all share it."""
    try:
        _transaction(connection, [s for group in groups for s in group])
        return [None] * len(groups)
    except Exception as exc:
        if len(groups) == 1 or isinstance(exc, sqlite3.OperationalError):
            return [_record_error(exc)] * len(groups)
    return [_alone(connection, group) for group in groups]


def _alone(connection: sqlite3.Connection, group: list[Statement]) -> RecordError | None:
    try:
        _transaction(connection, group)
    except Exception as exc:
        return _record_error(exc)
    return None


def _transaction(connection: sqlite3.Connection, statements: list[Statement]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for sql, parameters in statements:
            connection.executemany(sql, parameters)
        connection.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise


def _record_error(exc: Exception) -> RecordError:
    if isinstance(exc, sqlite3.Error):
        return RecordError(getattr(exc, "sqlite_errorcode", None), str(exc), True)
    return RecordError(None, repr(exc), False)


_connections: dict[Database, sqlite3.Connection] = {}


def _write_to(database: Database, groups: list[list[Statement]]) -> list[RecordError | None]:
    """In the helper: ``write_records`` on its connection to ``database`` (made at the
    first batch for it)."""
    connection = _connections.get(database)
    if connection is None:
        try:
            connection = sqlite3.connect(database.path, timeout=database.timeout,
                                         isolation_level=None)
            for statement in database.setup:
                connection.execute(statement)
        except sqlite3.Error as exc:
            return [_record_error(exc)] * len(groups)
        _connections[database] = connection
    return write_records(connection, groups)


def serve(sock: socket.socket) -> None:
    """Batch after batch, until the server's end closes."""
    while True:
        try:
            (new_directory, files, records), fds = receive_message(sock)  # (see _request)
        except EOFError:
            return
        given = iter(fds)
        send_message(sock, commit_batch(new_directory, [
            FileCommit(tmp, final, data, next(given) if has_fd else None)
            for tmp, final, data, has_fd in files],
            None if records is None else Records(Database(*records[0]), records[1])), [])


def _main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    send_message(sock, _READY, [])
    serve(sock)


if __name__ == "__main__":
    _main()
