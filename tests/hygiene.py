"""Test hygiene: no child process and no listening socket started by a test outlives the
test session (issue 17: every run used to leave two orphaned sinkhole workers behind).

A pytest plugin (``pytest_plugins`` in conftest.py). Linux only: it reads ``/proc``.

- The pytest process becomes a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a process
  whose parent dies, like a worker whose supervisor a test killed, is re-parented to us
  instead of to init, so it stays visible as one of our descendants.
- Around each test, it notes the descendant processes and the listening sockets of this
  process that appeared during the test (with the test's name).
- When the session ends, after every fixture is torn down, whatever is still there, once
  stragglers have had ``GRACE`` seconds to finish exiting, is reported with the test that
  started it, killed (those processes and only those), and fails the session.

Each look costs well under a millisecond (the process tree from ``/proc/<pid>/task/*/
children``, our descriptors from ``/proc/self/fd``); ``/proc/net`` is read only at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Generator
from pathlib import Path

import pytest

GRACE = 10.0
_PR_SET_CHILD_SUBREAPER = 36
_ENABLED = sys.platform.startswith("linux")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found |= {int(p) for p in Path(f"/proc/{pid}/task/{task}/children")
                          .read_text().split()}
    return found


def _state(pid: int) -> str | None:
    """The process's state letter (``Z`` for a zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _descendants() -> set[int]:
    """Living processes under this one (zombies are dead: they do not count)."""
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if _state(pid) not in (None, "Z")}


def _socket_inodes() -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _listening(inodes: set[int]) -> dict[int, str]:
    """Which of ``inodes`` are listening sockets (TCP, TCP6, Unix), described."""
    found: dict[int, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[9]) in inodes:  # TCP_LISTEN
                    found[int(fields[9])] = f"{table} {fields[1]}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[3], 16) & 0x10000 and int(fields[6]) in inodes:  # __SO_ACCEPTCON
                found[int(fields[6])] = f"unix {fields[7] if len(fields) > 7 else ''}"
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


class Hygiene:
    def __init__(self) -> None:
        self.processes: dict[int, tuple[str, str]] = {}  # pid -> (test, command)
        self.sockets: dict[int, str] = {}  # inode -> test
        self.leaks: list[str] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        processes, sockets = _descendants(), _socket_inodes()
        yield
        for pid in _descendants() - processes:
            self.processes.setdefault(pid, (item.nodeid, _command(pid)))
        for inode in _socket_inodes() - sockets:
            self.sockets.setdefault(inode, item.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        deadline = time.monotonic() + GRACE
        while True:
            alive = _descendants() & set(self.processes)
            listening = _listening(_socket_inodes() & set(self.sockets))
            if (not alive and not listening) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for pid in sorted(alive):
            test, command = self.processes[pid]
            self.leaks.append(f"process {pid} ({command}) started by {test}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for inode, what in listening.items():
            self.leaks.append(f"listening socket {what} opened by {self.sockets[inode]}")
        _reap()
        if self.leaks:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.leaks:
            terminalreporter.section("left behind by tests (tests/hygiene.py)", red=True)
            for leak in self.leaks:
                terminalreporter.line(leak)


def _reap() -> None:
    """Collect our zombie children: orphans re-parented to us, and the killed."""
    time.sleep(0.1)
    for pid in _children(os.getpid()):
        if _state(pid) == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def pytest_configure(config: pytest.Config) -> None:
    if not _ENABLED:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    config.pluginmanager.register(Hygiene(), "trio-smtpd-hygiene")
