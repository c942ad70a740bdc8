"""``--workers N``: a supervisor process and N worker processes sharing the listeners.

The supervisor reserves the listening addresses (see ``sockets``: SO_REUSEPORT where the
system has it, one inherited socket elsewhere), starts each worker as
``python -m trio_smtpd`` with the same options (less ``--workers``), restarts a worker
that dies (with a growing delay if it keeps dying), and on SIGTERM/SIGINT forwards
SIGTERM so every worker shuts down gracefully; a second signal kills them at once.
Workers run in their own session so that a terminal's Ctrl-C reaches only the
supervisor, which then forwards exactly one SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from .logs import log_event
from .service import Supervision
from .sockets import REUSEPORT, BoundSocket, reuseport_environment, to_environment

__all__ = ["supervise", "worker_argv"]

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


def supervise(count: int, argv: Sequence[str], sockets: list[BoundSocket],
              *, reuse_port: bool = REUSEPORT, service: Supervision | None = None) -> int:
    """Run the workers; ``sockets`` are reserved (reuse_port) or listening (shared).
    ``service``: metrics and systemd notifications for the whole group."""
    service = service or Supervision(None)
    fds: tuple[int, ...] = ()
    if reuse_port:
        env = {**os.environ, **reuseport_environment(sockets)}
    else:
        env = {**os.environ, **to_environment(sockets)}
        fds = tuple(item.sock.fileno() for item in sockets)
    try:
        return _Supervisor(count, worker_argv(argv), env, fds, service).run()
    finally:
        service.close()


class _Supervisor:
    """The supervisor's loop: signals in, workers started, watched and restarted."""

    def __init__(self, count: int, command: list[str], env: dict[str, str],
                 fds: tuple[int, ...], service: Supervision) -> None:
        self._command, self._env, self._fds = command, env, fds
        self._service = service
        self._signals: list[int] = []
        self._reloads: list[int] = []
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)  # reload the rules: every worker's job
        self._workers = [self._start(slot) for slot in range(count)]
        self._backoff = [0.0] * count
        self._started = [time.monotonic()] * count
        self._stopping = False

    def run(self) -> int:
        while True:
            if self._reloads:
                self._reloads.clear()
                self._send_all(signal.SIGHUP)
                self._service.reloading()
            if self._signals and not self._stopping:
                self._stopping = True
                self._service.stopping()
                log_event("shutdown", signal=signal.Signals(self._signals[0]).name,
                          workers=len(self._workers))
                self._send_all(signal.SIGTERM)
            if self._stopping and len(self._signals) > 1:
                log_event("exit", signal=signal.Signals(self._signals[-1]).name)
                self._send_all(signal.SIGKILL)
                return 1
            alive = self._watch()
            self._service.tick(alive)
            if self._stopping and alive == 0:
                return 0
            time.sleep(_POLL)

    def _watch(self) -> int:
        """Restart dead workers (unless stopping); return how many are alive."""
        alive = 0
        for slot, process in enumerate(self._workers):
            status = process.poll()
            if status is None:
                alive += 1
            elif not self._stopping:
                log_event("worker-exit", worker=slot, pid=process.pid, status=status)
                self._service.exited(slot, process.pid)
                self._restart(slot)
                alive += 1
        return alive

    def _restart(self, slot: int) -> None:
        # A worker that keeps dying at once is restarted ever more slowly.
        quick = time.monotonic() - self._started[slot] < 5
        backoff = min(_MAX_BACKOFF, self._backoff[slot] * 2 or 0.1) if quick else 0.0
        self._backoff[slot] = backoff
        time.sleep(backoff)
        self._workers[slot] = self._start(slot)
        self._started[slot] = time.monotonic()

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self._command, env=self._env | self._service.environment(slot),
                                   pass_fds=self._fds, start_new_session=True)
        log_event("worker-start", worker=slot, pid=process.pid)
        return process

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
