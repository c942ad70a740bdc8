"""``--workers N``: a supervisor process and N worker processes sharing the listeners.

The supervisor binds the listening sockets (see ``sockets``: with SO_REUSEPORT, one
socket per worker in a group routed by client address; elsewhere one shared socket),
starts each worker as ``python -m trio_smtpd`` with the same options (less
``--workers``) and its own sockets, restarts a worker that dies (with a growing delay if
it keeps dying) on the same sockets, and on SIGTERM/SIGINT forwards SIGTERM so every
worker shuts down gracefully; a second signal kills them at once. Workers run in their
own session so that a terminal's Ctrl-C reaches only the supervisor, which then forwards
exactly one SIGTERM.

Workers are started with SIGTERM, SIGINT and SIGHUP blocked (they unblock them once their
handlers are set), and die with the supervisor: see ``lifecycle``. Each is told its slot
(``TRIO_SMTPD_WORKER=slot/count``: it serves its share of ``--max-connections``) and the
supervisor's pid, liveness pipe and readiness pipe (``TRIO_SMTPD_SUPERVISOR=pid:fd:fd``).

A worker counts as alive (``/healthz``, ``trio_smtpd_workers``) only once it has said on
its readiness pipe that it serves: a replacement that cannot start (a rules file broken
since the supervisor started, which SIGHUP refused but a fresh worker reads) is restarted
with a growing delay, and is not counted meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from .lifecycle import signals_blocked, unblock_signals, watches
from .logs import log_event
from .service import Supervision
from .sockets import BoundSocket, to_environment

__all__ = ["SUPERVISOR_ENV", "WORKER_ENV", "Worker", "say_ready", "supervise",
           "worker_argv", "worker_environment"]

WORKER_ENV = "TRIO_SMTPD_WORKER"
SUPERVISOR_ENV = "TRIO_SMTPD_SUPERVISOR"

_POLL = 0.2
_MAX_BACKOFF = 10.0


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line of a worker: ours without ``--workers``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [sys.executable, "-m", "trio_smtpd", *out]


@dataclass(frozen=True)
class Worker:
    """What a worker process is told about its place."""

    slot: int
    count: int
    supervisor: int  # its pid
    liveness: int | None  # the read end of the supervisor's liveness pipe
    ready: int | None = None  # the write end of its readiness pipe: a byte once serving


def worker_environment() -> Worker | None:
    """This process's place as a worker, or None when it is on its own."""
    place, supervisor = os.environ.get(WORKER_ENV), os.environ.get(SUPERVISOR_ENV)
    if not place or not supervisor:
        return None
    slot, _, count = place.partition("/")
    pid, _, fds = supervisor.partition(":")
    fd, _, ready = fds.partition(":")
    return Worker(int(slot), int(count), int(pid), int(fd) if fd else None,
                  int(ready) if ready else None)


def say_ready(worker: Worker | None) -> None:
    """Tell the supervisor this worker serves (so it counts it alive from now on)."""
    if worker is not None and worker.ready is not None:
        with contextlib.suppress(OSError):  # (a supervisor gone: nobody to tell)
            os.write(worker.ready, b"1")
        os.close(worker.ready)


def supervise(count: int, argv: Sequence[str], sockets: list[list[BoundSocket]], *,
              service: Supervision | None = None) -> int:
    """Run the workers, worker ``k`` on ``sockets[k]`` (the same list for every worker
    when they share one socket per address). ``service``: metrics and systemd
    notifications for the whole group."""
    service = service or Supervision(None)
    try:
        return _Supervisor(count, worker_argv(argv), sockets, service).run()
    finally:
        service.close()


class _Supervisor:
    """The supervisor's loop: signals in, workers started, watched and restarted."""

    def __init__(self, count: int, command: list[str], sockets: list[list[BoundSocket]],
                 service: Supervision) -> None:
        self._command, self._sockets, self._count = command, sockets, count
        self._service = service
        # The liveness pipe: workers watch the read end; only we hold the write end.
        self._liveness = os.pipe() if "pipe" in watches() else None
        self._signals: list[int] = []
        self._reloads: list[int] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)  # reload the rules: every worker's job
        self._pipes: dict[int, int] = {}  # slot: read end of a readiness pipe not yet read
        self._serving: set[int] = set()  # slots whose worker said it serves
        self._workers = [self._start(slot) for slot in range(count)]
        self._backoff = [0.0] * count
        self._started = [time.monotonic()] * count
        self._stopping = False
        unblock_signals()  # (main() blocked them; the workers started with them blocked)

    def run(self) -> int:
        while True:
            if self._reloads:
                self._reloads.clear()
                self._service.reloading()
                self._send_all(signal.SIGHUP)
            if self._signals and not self._stopping:
                self._stopping = True
                log_event("shutdown", signal=signal.Signals(self._signals[0]).name,
                          workers=len(self._workers))
                self._service.stopping()
                self._send_all(signal.SIGTERM)
            if self._stopping and len(self._signals) > 1:
                log_event("exit", signal=signal.Signals(self._signals[-1]).name)
                self._send_all(signal.SIGKILL)
                return 1
            running, serving = self._watch()
            self._service.tick(serving)
            if self._stopping and running == 0:
                return 0
            time.sleep(_POLL)

    def _watch(self) -> tuple[int, int]:
        """Restart dead workers (unless stopping); return how many run, and how many of
        those serve. A restarted worker is not counted until it says it serves: one
        that cannot start must not look alive to /healthz and the workers gauge."""
        running = serving = 0
        for slot, process in enumerate(self._workers):
            status = process.poll()
            if status is None:
                running += 1
                serving += self._ready(slot)
            elif not self._stopping:
                log_event("worker-exit", worker=slot, pid=process.pid, status=status)
                self._service.exited(slot, process.pid)
                self._restart(slot)
                running += 1
        return running, serving

    def _ready(self, slot: int) -> bool:
        """Whether the worker in ``slot`` said it serves (read once, without waiting)."""
        fd = self._pipes.get(slot)
        if fd is not None:
            try:
                said = os.read(fd, 1)
            except BlockingIOError:
                return False
            os.close(fd)  # (said so, or closed it without saying: it died first)
            del self._pipes[slot]
            if said:
                self._serving.add(slot)
        return slot in self._serving

    def _restart(self, slot: int) -> None:
        # A worker that keeps dying at once is restarted ever more slowly.
        quick = time.monotonic() - self._started[slot] < 5
        backoff = min(_MAX_BACKOFF, self._backoff[slot] * 2 or 0.1) if quick else 0.0
        self._backoff[slot] = backoff
        time.sleep(backoff)
        self._workers[slot] = self._start(slot)
        self._started[slot] = time.monotonic()

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        sockets = self._sockets[slot]
        fds = [item.sock.fileno() for item in sockets]
        pipe = ""
        if self._liveness is not None:
            pipe = str(self._liveness[0])
            fds.append(self._liveness[0])
        ready = self._readiness_pipe(slot)
        env = {**os.environ, **to_environment(sockets), WORKER_ENV: f"{slot}/{self._count}",
               SUPERVISOR_ENV: f"{os.getpid()}:{pipe}:{ready}",
               **self._service.environment(slot)}
        # Started with the signals blocked: they stay so until its handlers are set.
        try:
            with signals_blocked():
                process = subprocess.Popen(self._command, env=env, pass_fds=[*fds, ready],
                                           start_new_session=True)
        finally:
            os.close(ready)  # (the worker's end: reading then sees EOF if it dies)
        log_event("worker-start", worker=slot, pid=process.pid)
        return process

    def _readiness_pipe(self, slot: int) -> int:
        """A new readiness pipe for ``slot``'s next worker: its write end."""
        old = self._pipes.pop(slot, None)
        if old is not None:
            os.close(old)
        self._serving.discard(slot)
        read, write = os.pipe()
        os.set_blocking(read, False)
        self._pipes[slot] = read
        return write

    def _send_all(self, signum: int) -> None:
        for process in self._workers:
            _send(process, signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self._reloads.append(signum)


def _send(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
