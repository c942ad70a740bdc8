"""systemd: socket activation by the real ``systemd-socket-activate``, and the
``Type=notify`` messages as a service manager's NOTIFY_SOCKET receives them."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import AS_ROOT, Sinkhole, require_program
from tests.operations import fetch, free_port, wait_until
from trio_smtpd.sinkhole.systemd import Notifier

Factory = Callable[..., Sinkhole]
MESSAGE = b"From: a@example.org\r\nSubject: activated\r\n\r\nhello\r\n"


@pytest.mark.interop
def test_socket_activation_serves_the_passed_sockets(tmp_path: Path) -> None:
    activate = require_program("systemd-socket-activate", "systemd")
    port, metrics = free_port(), free_port()
    log_path = tmp_path / "log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [activate, "-l", f"127.0.0.1:{port}", "-l", f"127.0.0.1:{metrics}",
             "--fdname=smtp:metrics", sys.executable, "-m", "trio_smtpd", "--no-dns",
             "--log-format", "json", "--maildir", str(tmp_path / "maildir"),
             "--hostname", "mx.test", *AS_ROOT], stdout=log, stderr=log)
    try:
        # systemd-socket-activate holds the sockets and starts us at the first client.
        wait_until(lambda: b"Listening on" in log_path.read_bytes(), "the sockets")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@example.org", ["b@example.net"], MESSAGE)
        events = [json.loads(line) for line in log_path.read_text().splitlines()
                  if line.startswith("{")]
        [listening] = [e for e in events if e["event"] == "listening"]
        assert listening["addresses"] == [f"127.0.0.1:{port}"]
        assert listening["pid"] == process.pid  # (exec'd: systemd's LISTEN_PID is ours)
        assert fetch(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n")
        [stored] = list((tmp_path / "maildir" / "new").iterdir())
        assert stored.read_bytes().endswith(MESSAGE)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


class NotifySocket:
    """A service manager's end: an AF_UNIX datagram socket, and what it received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def states(self) -> list[str]:
        """The state changes, in order (watchdog pings left out)."""
        self.read()
        return [key for m in self.messages for key in m
                if key in ("READY", "RELOADING", "STOPPING")]

    def wait_for(self, *states: str) -> None:
        wait_until(lambda: self.states()[-len(states):] == list(states),
                   f"{states} (got {self.states()})")


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    yield listener
    listener.sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reloading_stopping_in_order(sinkhole_factory: Factory,
                                           notify_socket: NotifySocket,
                                           monkeypatch: pytest.MonkeyPatch,
                                           workers: int) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    sinkhole = sinkhole_factory("--workers", str(workers))
    notify_socket.wait_for("READY")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.net"], MESSAGE)
    sinkhole.process.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING", "READY")
    wait_until(lambda: sum("WATCHDOG" in m for m in notify_socket.messages) >= 2,
               "watchdog pings")
    assert sinkhole.stop(signal.SIGTERM) == 0
    notify_socket.read()
    assert notify_socket.states() == ["READY", "RELOADING", "READY", "STOPPING"]
    # Only the process systemd watches speaks (not the workers), and it says who it is.
    assert {m["MAINPID"] for m in notify_socket.messages if "MAINPID" in m} == {
        str(sinkhole.process.pid)}
    reloading = next(m for m in notify_socket.messages if "RELOADING" in m)
    assert int(reloading["MONOTONIC_USEC"]) > 0


def test_notifier_speaks_to_an_abstract_socket_and_is_quiet_without_one() -> None:
    name = f"trio-smtpd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        environ = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "5000000",
                   "WATCHDOG_PID": str(os.getpid())}
        notifier = Notifier(environ)
        assert environ == {}  # taken: child processes do not inherit it
        assert notifier.watchdog_interval == 2.5
        notifier.stopping()
        assert manager.recv(100).startswith(b"STOPPING=1\n")
    quiet = Notifier({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"})
    assert not quiet.enabled and quiet.watchdog_interval is None  # (another process's)
    quiet.ready()  # nothing to send to: nothing happens


@pytest.mark.interop
def test_the_contrib_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze", "systemd")
    contrib = Path(__file__).parent.parent / "contrib" / "systemd"
    for unit in ("trio-smtpd.service", "trio-smtpd.socket"):
        text = (contrib / unit).read_text()
        # (verify wants the command to exist: ours, wherever this test runs)
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/trio-smtpd",
                                                  f"{sys.executable} -m trio_smtpd"))
    result = subprocess.run([analyze, "verify", str(tmp_path / "trio-smtpd.socket"),
                             str(tmp_path / "trio-smtpd.service")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "trio-smtpd" not in result.stderr, result.stderr
    service = (contrib / "trio-smtpd.service").read_text()
    for hardening in ("Type=notify", "DynamicUser=yes", "ProtectSystem=strict",
                      "ReadWritePaths=/var/lib/trio-smtpd", "NoNewPrivileges=yes"):
        assert f"\n{hardening}\n" in service
    assert "FileDescriptorName=metrics" in (contrib / "trio-smtpd.socket").read_text()


@pytest.mark.parametrize("fd3", ["3<&-", "3</dev/null"], ids=["closed", "not-a-socket"])
def test_a_bad_socket_activation_is_a_one_line_error(tmp_path: Path, fd3: str) -> None:
    # Found by review (2026-12-02): LISTEN_FDS=1 with fd 3 closed, or a file, ended in a
    # traceback and exit status 1, where a non-listening socket was already a clear
    # configuration error (status 2).
    program = [sys.executable, "-m", "trio_smtpd", "--maildir", str(tmp_path / "mail"),
               "--no-dns", *AS_ROOT]
    script = f'{fd3}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
    result = subprocess.run(["sh", "-c", script, "sh", *program], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "passed socket 3" in result.stderr
