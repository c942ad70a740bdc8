"""``--metrics-listen``: the program's Prometheus endpoint, scraped after real traffic,
checked by promtool and scraped by a real Prometheus server."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Sinkhole, require_program
from tests.dnsserver import Unbound
from tests.operations import fetch, free_port, label_values, scrape, total, wait_until
from trio_smtpd.sinkhole.passwords import hash_password

Factory = Callable[..., Sinkhole]
MESSAGE = b"From: a@example.org\r\nSubject: metrics\r\n\r\nhello\r\n"


def promtool_finds_no_problem(exposition: str) -> None:
    promtool = require_program("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.interop
def test_counters_move_by_what_the_traffic_did(
        sinkhole_factory: Factory, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext, dns_server: Unbound, tmp_path: Path) -> None:
    cert, key, _ = cert_files
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret', log2_n=10)}\n")
    metrics = free_port()
    sinkhole = sinkhole_factory(
        "--metrics-listen", f"127.0.0.1:{metrics}", "--tls-cert", str(cert),
        "--tls-key", str(key), "--auth-file", str(users), "--max-recipients", "1",
        "--dns-server", dns_server.address, "--no-verify")
    _, before = scrape(metrics)
    assert total(before, "trio_smtpd_connections_accepted_total") == 0
    assert total(before, "trio_smtpd_accepting") == 1
    # 1: STARTTLS, a wrong password (smtplib tries PLAIN, then LOGIN), the right one,
    # a message to one recipient.
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.starttls(context=client_tls)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", "s3cret")
        client.sendmail("alice@example.org", ["b@example.net"], MESSAGE)
    # 2: two recipients where one is allowed: the second is refused 452 by the engine.
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        refused = client.sendmail("a@example.org", ["c@example.net", "d@example.net"],
                                  MESSAGE)
        assert list(refused) == ["d@example.net"]
    # 3: an unknown command.
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"FROB\r\n")
        assert reader.readline().startswith(b"500 ")
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221 ")
    wait_until(lambda: total(scrape(metrics)[1], "trio_smtpd_sessions_total") == 3,
               "three sessions counted")
    exposition, after = scrape(metrics)
    promtool_finds_no_problem(exposition)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("trio_smtpd_connections_accepted_total") == 3
    assert delta("trio_smtpd_sessions_total", outcome="quit") == 3
    assert delta("trio_smtpd_session_duration_seconds_count") == 3
    assert delta("trio_smtpd_tls_handshakes_total", mode="starttls", result="ok") == 1
    assert label_values(after, "trio_smtpd_tls_handshakes_total", "version") == {"TLSv1.3"}
    assert delta("trio_smtpd_auth_total", mechanism="PLAIN", result="invalid") == 1
    assert delta("trio_smtpd_auth_total", mechanism="LOGIN", result="invalid") == 1
    assert delta("trio_smtpd_auth_total", mechanism="PLAIN", result="success") == 1
    assert delta("trio_smtpd_refusals_total", command="AUTH", code="535") == 2
    assert delta("trio_smtpd_refusals_total", command="RCPT", code="452") == 1
    assert delta("trio_smtpd_refusals_total", command="FROB", code="500",
                 enhanced="5.5.1") == 1
    assert delta("trio_smtpd_refusals_total") == 4
    assert delta("trio_smtpd_transactions_total", outcome="accepted", reply_class="2xx") == 2
    assert delta("trio_smtpd_transactions_total") == 2
    assert delta("trio_smtpd_recipients_total", outcome="accepted", reply_class="2xx") == 2
    assert delta("trio_smtpd_recipients_total", outcome="refused", reply_class="4xx") == 1
    assert delta("trio_smtpd_message_size_bytes_count") == 2
    assert delta("trio_smtpd_delivery_seconds_count", outcome="accepted") == 2
    assert delta("trio_smtpd_maildir_fsync_seconds_count", kind="file") == 2
    assert delta("trio_smtpd_maildir_fsync_seconds_count", kind="directory") == 2
    # Reverse DNS of each client (127.0.0.1 is good.test): asked once, then cached.
    assert delta("trio_smtpd_dns_lookups_total", type="PTR", result="ok") == 3
    assert delta("trio_smtpd_dns_lookups_total", type="PTR", cached="false") == 1
    assert delta("trio_smtpd_dns_lookup_seconds_count", type="PTR") == 1
    assert label_values(after, "trio_smtpd_sessions_total", "worker") == {"0"}
    assert len(sinkhole.stored()) == 2


def test_healthz_says_503_once_the_server_stops_accepting(sinkhole_factory: Factory) -> None:
    metrics = free_port()
    sinkhole = sinkhole_factory("--metrics-listen", f"127.0.0.1:{metrics}")
    assert fetch(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n")
    assert fetch(f"http://127.0.0.1:{metrics}/nothing")[0] == 404
    # A client in the middle of a message keeps the server draining after SIGTERM.
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                     b"DATA\r\n")
        assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        sinkhole.process.send_signal(signal.SIGTERM)
        wait_until(lambda: fetch(f"http://127.0.0.1:{metrics}/healthz")[0] == 503,
                   "/healthz to say 503")
        sock.sendall(b"Subject: last\r\n\r\nbody\r\n.\r\n")
        assert reader.readline().startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
    assert sinkhole.process.wait(30) == 0
    assert len(sinkhole.stored()) == 1


@pytest.mark.interop
def test_workers_report_through_one_endpoint_with_a_label_each(
        sinkhole_factory: Factory) -> None:
    metrics = free_port()
    sinkhole = sinkhole_factory("--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics}")
    sinkhole.wait_for("listening", 3)
    for n in range(12):
        with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.net"], MESSAGE + b"%d\r\n" % n)
    wait_until(lambda: total(scrape(metrics)[1], "trio_smtpd_sessions_total") == 12,
               "twelve sessions counted")
    exposition, samples = scrape(metrics)
    promtool_finds_no_problem(exposition)
    assert total(samples, "trio_smtpd_transactions_total", outcome="accepted") == 12
    assert label_values(samples, "trio_smtpd_sessions_total", "worker") <= {"0", "1"}
    # (The supervisor counts a worker once it has read its word that it serves, on its
    # next turn: not necessarily before the workers' first sessions.)
    wait_until(lambda: total(scrape(metrics)[1], "trio_smtpd_workers") == 2,
               "both workers counted")
    wait_until(lambda: total(scrape(metrics)[1], "trio_smtpd_accepting") == 2,
               "both workers' gauges")
    # A worker killed: restarted, counted, and its counters stay (they are history).
    victim = int(str(sinkhole.events("worker-start")[0]["pid"]))
    os.kill(victim, signal.SIGKILL)
    sinkhole.wait_for("worker-start", 3)
    wait_until(lambda: total(scrape(metrics)[1], "trio_smtpd_worker_restarts_total") == 1,
               "the restart counted")
    assert total(scrape(metrics)[1], "trio_smtpd_transactions_total") == 12
    directory = _multiprocess_directory(sinkhole)
    assert directory.is_dir()
    assert sinkhole.stop() == 0
    assert not directory.exists()  # the supervisor cleans up after its workers


def _multiprocess_directory(sinkhole: Sinkhole) -> Path:
    """Where the workers write their values, from a live worker's environment."""
    for event in reversed(sinkhole.events("worker-start")):
        try:
            environ = Path(f"/proc/{event['pid']}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("no worker with a metrics directory")


@pytest.mark.interop
def test_a_real_prometheus_scrapes_it(sinkhole_factory: Factory, tmp_path: Path) -> None:
    prometheus = require_program("prometheus")
    metrics, web = free_port(), free_port()
    sinkhole_factory("--metrics-listen", f"127.0.0.1:{metrics}")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # (YAML is a superset of JSON)
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "trio-smtpd",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics}"]}]}]}))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=log)
    try:
        def target_up() -> bool:
            try:
                status, body = fetch(f"http://127.0.0.1:{web}/api/v1/targets", timeout=2)
            except OSError:
                return False
            targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            return any(t["health"] == "up" for t in targets)

        wait_until(target_up, "Prometheus to scrape the target", timeout=60)
        [target] = json.loads(fetch(f"http://127.0.0.1:{web}/api/v1/targets")[1]
                              )["data"]["activeTargets"]
        assert target["scrapeUrl"] == f"http://127.0.0.1:{metrics}/metrics"
        assert target["lastError"] == ""
        # And what it stored is ours.
        _, body = fetch(f"http://127.0.0.1:{web}/api/v1/query?query=trio_smtpd_accepting")
        assert json.loads(body)["data"]["result"][0]["value"][1] == "1"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_idle_connections_to_the_endpoint_are_bounded(sinkhole_factory: Factory) -> None:
    # Found by review (2026-12-02): each connection that sent part of a request held a
    # thread for ever: 2,000 of them made 2,000 threads and 53 MB more.
    metrics = free_port()
    sinkhole = sinkhole_factory("--metrics-listen", f"127.0.0.1:{metrics}")
    assert fetch(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n")
    before = _threads(sinkhole.process.pid)
    idle = [socket.create_connection(("127.0.0.1", metrics), timeout=10) for _ in range(200)]
    try:
        for sock in idle:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        wait_until(lambda: _threads(sinkhole.process.pid) >= before + 8, "threads to start")
        assert _threads(sinkhole.process.pid) <= before + 64
    finally:
        for sock in idle:
            sock.close()
    # Once they are gone, a scrape is served again (meanwhile one may be turned away).
    def served() -> bool:
        try:
            return fetch(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n")
        except OSError:
            return False

    wait_until(served, "a scrape to be served again")
