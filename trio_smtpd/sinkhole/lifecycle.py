"""A process's life: its signals held until it can handle them, and a worker's death
with its supervisor.

**Signals.** SIGTERM, SIGINT and SIGHUP would kill a process that has not installed its
handlers yet: the default action of SIGHUP is to terminate, so a rules reload sent to a
program that had just started (or to a worker the supervisor had just restarted) killed
it. ``block_signals()`` is the first thing ``main()`` does; the signals that arrive
meanwhile wait in the kernel, and ``unblock_signals()`` delivers them once the handlers
are in place. The signal mask is inherited across ``fork`` and ``exec``: the supervisor
starts its workers with the signals blocked, so a worker is safe from its first
instruction, before the interpreter has even started.

**Dying with the supervisor.** A worker must not outlive its supervisor: orphaned workers
keep serving, hold the port, and split the traffic with the next instance. Two
mechanisms, each enough alone:

- Linux's ``PR_SET_PDEATHSIG``: the kernel sends the worker SIGTERM when its parent
  dies, however it dies (``kill -9`` included). Checked against a race: if the
  supervisor died before the call, the worker's parent is no longer the supervisor.
- A liveness pipe, on every system: the supervisor holds the only write end; each worker
  watches the read end, which reports end-of-file when the supervisor is gone.

Either way the worker shuts down gracefully, as on SIGTERM. ``TRIO_SMTPD_SUPERVISOR_WATCH``
(``pdeathsig`` or ``pipe``; both by default) keeps only one, for the tests of each.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Iterator

import trio

__all__ = ["HANDLED", "WATCH_ENV", "block_signals", "die_with_parent", "signals_blocked",
           "supervisor_gone", "unblock_signals", "watches"]

HANDLED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
WATCH_ENV = "TRIO_SMTPD_SUPERVISOR_WATCH"
_PR_SET_PDEATHSIG = 1


def block_signals() -> None:
    """Hold SIGTERM, SIGINT and SIGHUP until ``unblock_signals()``."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def unblock_signals() -> None:
    """Deliver the signals held so far, and the later ones, to the handlers now set."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold the signals meanwhile (a child started now inherits them held)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def watches() -> set[str]:
    """The mechanisms in use: ``pdeathsig`` and ``pipe`` unless the environment says one."""
    chosen = os.environ.get(WATCH_ENV, "")
    return {chosen} if chosen in ("pdeathsig", "pipe") else {"pdeathsig", "pipe"}


def die_with_parent(supervisor: int) -> bool:
    """Have the kernel send us SIGTERM when the supervisor dies (Linux); False if it
    already has (our parent is someone else now), so we should not even start."""
    if "pdeathsig" in watches() and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == supervisor


async def supervisor_gone(fd: int) -> None:
    """Return once the supervisor's end of the liveness pipe is closed (it died)."""
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            if not os.read(fd, 64):
                return
        except BlockingIOError:
            continue
