"""What the tests leave running: the processes they start and the sockets those listen on.

A process is recognised by a variable in its environment, not by its parent: the
sinkhole's workers start sessions of their own, and a worker whose supervisor was killed
is adopted by init, so walking the process tree from pytest would miss exactly the
processes that outlive their test. Every process a test starts inherits the run's
variable (set by conftest.py before any test runs), and each sinkhole gets one of its own
so that its teardown can find all its workers.

Linux only: everything is read from /proc, so the check needs no dependency.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from pathlib import Path

PROC = Path("/proc")


def processes_with(name: str, value: str) -> dict[int, str]:
    """Live processes (zombies excluded: they hold nothing) whose environment has
    ``name=value``, with their command lines; never this process itself."""
    wanted = f"{name}={value}".encode()
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            # A zombie's environ reads as empty, so it is never matched.
            environ = (PROC / entry / "environ").read_bytes().split(b"\0")
            if wanted not in environ:
                continue
            cmdline = (PROC / entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Poll until every process in ``pids`` has exited; return those still alive."""
    deadline = time.monotonic() + timeout
    remaining = {pid for pid in pids if alive(pid)}
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = {pid for pid in remaining if alive(pid)}
    return remaining


def kill_all(pids: set[int], timeout: float = 10) -> set[int]:
    """SIGKILL each of ``pids``; return those still alive after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return wait_gone(pids, timeout)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds (cheap: no /proc/net table is read)."""
    inodes = set()
    try:
        fds = os.listdir(PROC / str(pid) / "fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(PROC / str(pid) / "fd" / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _hex_address(text: str) -> str:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0])
                     for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    shown = socket.inet_ntop(family, words)
    return f"{shown}:{int(port, 16)}" if family == socket.AF_INET else f"[{shown}]:{int(port, 16)}"


def _listening() -> dict[int, str]:
    """Every listening TCP and Unix socket in this network namespace: inode -> address."""
    found: dict[int, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[int(fields[9])] = _hex_address(fields[1])
    try:
        lines = (PROC / "net" / "unix").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listen() was called
            found[int(fields[6])] = "unix:" + (fields[7] if len(fields) > 7 else "(unnamed)")
    return found


def listening_sockets(pids: set[int]) -> dict[int, str]:
    """The listening sockets that ``pids`` hold: inode -> address.

    Reads the whole /proc/net tables, which can be long on a busy machine: call it only
    when there is something to look for."""
    listening = _listening()
    held: dict[int, str] = {}
    for pid in pids:
        for inode in socket_inodes(pid):
            if inode in listening:
                held[inode] = listening[inode]
    return held


def commit_helpers(pid: int) -> list[int]:
    """The commit processes (``trio_smtpd._commitprocess``) that ``pid`` started."""
    children = []
    for task in os.listdir(PROC / f"{pid}/task"):
        children += (PROC / f"{pid}/task/{task}/children").read_text().split()
    return [int(child) for child in children
            if b"_commitprocess" in (PROC / f"{child}/cmdline").read_bytes()]
