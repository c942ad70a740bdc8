"""Scale-out: --workers processes sharing the listeners, and HAProxy with PROXY v2 in front."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Sinkhole, require_program
from tests.operations import fetch, scrape, total, wait_until
from tests.test_sinkhole import headers_and_body

Factory = Callable[..., Sinkhole]


def worker_pids(sinkhole: Sinkhole) -> set[int]:
    return {int(str(e["pid"])) for e in sinkhole.events("worker-start")}


def send(port: int, ident: str, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10,
                      source_address=(source, 0)) as client:
        client.sendmail("a@example.org", ["b@example.net"],
                        f"Subject: {ident}\r\n\r\nid={ident}\r\n".encode())


def stored_ids(sinkhole: Sinkhole) -> list[str]:
    return [m.split(b"id=")[1].split(b"\r\n")[0].decode() for m in sinkhole.stored()]


@pytest.mark.parametrize("mode", ["reuseport", "shared-socket"])
def test_workers_share_the_port_restart_and_stop_gracefully(
        sinkhole_factory: Factory, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    if mode == "shared-socket":
        monkeypatch.setenv("TRIO_SMTPD_SHARED_SOCKET", "1")
    sinkhole = sinkhole_factory("--workers", "2")
    sinkhole.wait_for("listening", 3)  # the supervisor's line, then one per worker
    first = worker_pids(sinkhole)
    assert len(first) == 2
    for n in range(20):
        send(sinkhole.port, f"m{n}")
    # Every message stored exactly once, by whichever worker took the connection.
    assert sorted(stored_ids(sinkhole)) == sorted(f"m{n}" for n in range(20))
    serving = {int(str(e["pid"])) for e in sinkhole.events("listening")[1:]}
    assert serving == first
    # A worker that dies is replaced, and the port keeps working.
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    sinkhole.wait_for("worker-start", 3)
    # Exactly one new process, in the dead worker's slot; the dead one is not it.
    [replacement] = worker_pids(sinkhole) - first
    slots = {int(str(e["pid"])): e["worker"] for e in sinkhole.events("worker-start")}
    assert slots[replacement] == slots[victim]
    exits = sinkhole.events("worker-exit")
    assert [int(str(e["pid"])) for e in exits] == [victim]
    sinkhole.wait_for("listening", 4)
    # The one that started listening since is the replacement.
    assert int(str(sinkhole.events("listening")[3]["pid"])) == replacement
    for n in range(20, 30):
        send(sinkhole.port, f"m{n}")
    assert len(stored_ids(sinkhole)) == 30
    # SIGTERM to the supervisor: all workers drain and exit, then it does.
    assert sinkhole.stop(signal.SIGTERM) == 0
    for pid in worker_pids(sinkhole):
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.interop
def test_haproxy_send_proxy_v2_in_front_of_two_instances(
        sinkhole_factory: Factory, tmp_path: Path) -> None:
    haproxy = require_program("haproxy")
    trusted = ("--proxy-trusted", "127.0.0.1/32")
    backends = [sinkhole_factory("--proxy-listen", "127.0.0.1:0", *trusted, listen=1)
                for _ in range(2)]
    front = free_port()
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{b.ports[1]} send-proxy-v2"
        for i, b in enumerate(backends))
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{front}
    default_backend sinks
backend sinks
    balance roundrobin
{servers}
""")
    proxy = subprocess.Popen([haproxy, "-f", str(config), "-db"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                assert proxy.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        # The client comes from 127.0.0.2; HAProxy itself talks to the backends from
        # 127.0.0.1, so only the PROXY header can tell them the real client.
        for n in range(10):
            send(front, f"h{n}", source="127.0.0.2")
    finally:
        proxy.terminate()
        proxy.wait(10)
    # Both instances deliver into one Maildir: every message is there exactly once.
    assert backends[0].maildir == backends[1].maildir
    assert sorted(stored_ids(backends[0])) == sorted(f"h{n}" for n in range(10))
    for message in backends[0].stored():
        ours, _ = headers_and_body(message)
        assert ours[-1].startswith("Received: from ") and "(unknown [127.0.0.2])" in ours[-1]
    for backend in backends:
        entries = backend.events("message")
        assert entries  # round robin used both instances
        assert all(str(e["peer"]).startswith("127.0.0.2:") for e in entries)
    # A direct connection from an untrusted address to a PROXY listener is refused.
    direct = socket.create_connection(("127.0.0.1", backends[0].ports[1]), timeout=10,
                                      source_address=("127.0.0.2", 0))
    direct.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\r\n")
    # Closed without a greeting: a plain close, or a reset with our header unread.
    with contextlib.suppress(ConnectionResetError):
        assert direct.recv(100) == b""
    direct.close()
    deadline = time.monotonic() + 10
    while not any("untrusted" in str(e.get("message")) for e in backends[0].events("log")):
        assert time.monotonic() < deadline, backends[0].log()
        time.sleep(0.05)


def test_a_worker_that_cannot_restart_is_not_counted_alive(
        sinkhole_factory: Factory, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    good = '[[rule]]\nphase = "mail"\naction = "accept"\nmatch = { sender = ["a@b.c"] }\n'
    rules.write_text(good)
    metrics = free_port()
    sinkhole = sinkhole_factory("--workers", "2", "--rules", str(rules), "--metrics-listen",
                                f"127.0.0.1:{metrics}")
    sinkhole.wait_for("listening", 3)

    def workers() -> float:
        return total(scrape(metrics)[1], "trio_smtpd_workers")

    wait_until(lambda: workers() == 2, "both workers counted")
    # The rules file broken: a reload keeps the old rules, but a new worker cannot start.
    rules.write_text('[[rule]]\nphase = "mail"\naction = "bogus"\n')
    sinkhole.process.send_signal(signal.SIGHUP)
    sinkhole.wait_for("rules-reload", 2)
    victim = min(worker_pids(sinkhole))
    os.kill(victim, signal.SIGKILL)
    # Its replacement has failed at least once (exit 2): one worker serves, not two.
    wait_until(lambda: len(sinkhole.events("worker-exit")) >= 2, "the replacement to fail")
    assert [e["status"] for e in sinkhole.events("worker-exit")][1:2] == [2]
    wait_until(lambda: workers() == 1, "one worker counted")
    assert fetch(f"http://127.0.0.1:{metrics}/healthz")[0] == 200  # (one still serves)
    # The rules file mended: the next restart serves, and is counted then.
    rules.write_text(good)
    wait_until(lambda: workers() == 2, "the replacement counted", timeout=40)
    assert sinkhole.stop(signal.SIGTERM) == 0
