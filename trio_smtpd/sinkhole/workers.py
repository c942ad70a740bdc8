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
              *, reuse_port: bool = REUSEPORT) -> int:
    """Run the workers; ``sockets`` are reserved (reuse_port) or listening (shared)."""
    fds: tuple[int, ...] = ()
    if reuse_port:
        env = {**os.environ, **reuseport_environment(sockets)}
    else:
        env = {**os.environ, **to_environment(sockets)}
        fds = tuple(item.sock.fileno() for item in sockets)
    command = worker_argv(argv)
    signals: list[int] = []
    reloads: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        reloads.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)  # reload the rules: every worker's job

    def start(slot: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, env=env, pass_fds=fds, start_new_session=True)
        log_event("worker-start", worker=slot, pid=process.pid)
        return process

    workers = [start(slot) for slot in range(count)]
    backoff = [0.0] * count
    started = [time.monotonic()] * count
    stopping = False
    while True:
        if reloads:
            reloads.clear()
            for process in workers:
                _send(process, signal.SIGHUP)
        if signals and not stopping:
            stopping = True
            log_event("shutdown", signal=signal.Signals(signals[0]).name, workers=count)
            for process in workers:
                _send(process, signal.SIGTERM)
        if stopping and len(signals) > 1:
            log_event("exit", signal=signal.Signals(signals[-1]).name)
            for process in workers:
                _send(process, signal.SIGKILL)
            return 1
        alive = 0
        for slot, process in enumerate(workers):
            status = process.poll()
            if status is None:
                alive += 1
                continue
            if stopping:
                continue
            log_event("worker-exit", worker=slot, pid=process.pid, status=status)
            # A worker that keeps dying at once is restarted ever more slowly.
            quick = time.monotonic() - started[slot] < 5
            backoff[slot] = min(_MAX_BACKOFF, backoff[slot] * 2 or 0.1) if quick else 0.0
            time.sleep(backoff[slot])
            workers[slot] = start(slot)
            started[slot] = time.monotonic()
            alive += 1
        if stopping and alive == 0:
            return 0
        time.sleep(_POLL)


def _send(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
