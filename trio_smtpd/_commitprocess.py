"""A helper process that does the file work of Maildir commit batches: both its ends.

The server's process sends a batch (each message's name in ``tmp/``, its name in
``new/``, the octets still in its write buffer, and the descriptor of a file already
begun) over a socket pair; the helper writes each file out, fsyncs each, renames each
into ``new/``, fsyncs ``new/`` once, and answers with each message's outcome and the
fsyncs' durations. In the server's process, the thread of the batch only waits for
that answer. Done there, the same work was a dozen trips out of the GIL and back for
each message, each one waiting for the event loop's thread to let go of it: the commit
thread and the event loop slowed each other down (benchmarks/README.md, "Round 5").

The helper runs this file as a script, with the standard library alone: ``python -I``
puts neither the package nor anything from the environment on its path. It ignores
the signals that stop the server (the server ends it by closing its socket; a batch
under way is finished first), and ends when that socket closes, however the server's
process ended: nothing is left running after it.
"""

from __future__ import annotations

import array
import errno
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

__all__ = ["CommitProcess", "FileCommit", "FileOutcome", "Unavailable"]

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
    ``new/`` and ``new/`` is fsynced; else ``(errno, text)``, and ``tmp`` is gone."""

    error: tuple[int, str] | None
    fsync_seconds: float | None  # of the file, if it got that far
    directory_seconds: float | None  # of ``new/``, shared by the batch


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

    def commit(self, new_directory: str, files: list[FileCommit]) -> list[FileOutcome]:
        """Each file into ``new_directory``. Raises Unavailable when the helper cannot
        be started (nothing was done: commit them elsewhere), OSError when it ends
        before it answers (then none of ``files`` counts as committed, though some may
        be in ``new/``; their ``tmp`` names are left to the caller)."""
        with self._lock:
            if self._closed:
                raise Unavailable(errno.EIO, "the commit process is closed")
            outcomes: list[FileOutcome] = []
            for start in range(0, len(files), MAX_FDS):
                try:
                    outcomes += self._request(new_directory, files[start:start + MAX_FDS])
                except Unavailable as exc:
                    if outcomes:  # (part of the batch is done: it cannot be done again)
                        raise OSError(exc.errno, exc.strerror) from None
                    raise
            return outcomes

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()

    def _request(self, new_directory: str, files: list[FileCommit]) -> list[FileOutcome]:
        if self._process is not None and self._process.poll() is not None:
            self._stop()  # (it ended between batches: none of this batch was sent to it)
        sock = self._socket or self._start()
        try:
            # Plain tuples: the helper has no package to unpickle this module's types from.
            send_message(sock, (new_directory, [(f.tmp, f.final, f.data, f.fd is not None)
                                                for f in files]),
                         [f.fd for f in files if f.fd is not None])
            outcomes, _ = receive_message(sock)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._stop()  # (the next batch starts another)
            raise OSError(getattr(exc, "errno", None) or errno.EIO,
                          f"the commit process failed: {exc}") from None
        return [FileOutcome(*outcome) for outcome in outcomes]

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
        started = time.monotonic()
        failed = _fsync_directory(new_directory)
        directory = time.monotonic() - started
        errors = [failed if error is None else error for error in errors]
    return [(error, fsync, directory) for error, fsync in zip(errors, fsyncs, strict=True)]


def _write_out(f: FileCommit, errors: list[tuple[int, str] | None], i: int) -> int | None:
    fd = f.fd
    try:
        if fd is None:
            fd = os.open(f.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        view = memoryview(f.data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        errors[i] = (exc.errno or errno.EIO, exc.strerror or str(exc))
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


def _fsync_directory(path: str) -> tuple[int, str] | None:
    errors: list[tuple[int, str] | None] = [None]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return (exc.errno or errno.EIO, exc.strerror or str(exc))
    try:
        _attempt(errors, 0, os.fsync, fd)
    finally:
        os.close(fd)
    return errors[0]


def _attempt(errors: list[tuple[int, str] | None], i: int, call: Any, *args: Any) -> None:
    try:
        call(*args)
    except OSError as exc:
        errors[i] = (exc.errno or errno.EIO, exc.strerror or str(exc))


def serve(sock: socket.socket) -> None:
    """Batch after batch, until the server's end closes."""
    while True:
        try:
            (new_directory, files), fds = receive_message(sock)  # (see _request)
        except EOFError:
            return
        given = iter(fds)
        send_message(sock, commit_files(new_directory, [
            FileCommit(tmp, final, data, next(given) if has_fd else None)
            for tmp, final, data, has_fd in files]), [])


def _main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    send_message(sock, _READY, [])
    serve(sock)


if __name__ == "__main__":
    _main()
