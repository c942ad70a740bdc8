"""The PostgreSQL store against a real server (tests/pgcluster.py, one per session and a
database per test; a server of its own for the test that stops it): rows and bodies,
sinkholes and --workers writing one database at once, and the database going away and
coming back under load. (The SIGKILL check is in test_sinkhole_durability.py, for every
store.)"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import Sinkhole
from tests.pgcluster import Cluster
from tests.test_stores import boss_mail_rules

Factory = Callable[..., Sinkhole]
SMALL = b"Subject: small\r\n\r\nHello, trap.\r\n"
LARGE = b"Subject: large\r\n\r\n" + (b"z" * 70 + b"\r\n") * 100


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(sql.encode()).fetchall()


def test_rows_hold_small_messages_and_name_the_files_of_large_ones(
        sinkhole_factory: Factory, postgres_url: str) -> None:
    sinkhole = sinkhole_factory("--store", postgres_url, "--store-body-limit", "4096")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@spam.example", ["trap@trap.test", "b@trap.test"], SMALL)
        client.sendmail("a@spam.example", ["trap@trap.test"], LARGE)
    [listening] = sinkhole.events("listening")
    assert listening["store"] == "postgresql"
    small, large = query(postgres_url, "SELECT name, file, body, metadata, sender_domain, "
                                       "host(peer_ip), network::text FROM messages ORDER BY id")
    # The small one is in its row, whole: our trace headers, then the message.
    assert small[1] is None and bytes(small[2]).endswith(SMALL)
    assert bytes(small[2]).startswith(b"Return-Path: <a@spam.example>\r\n")
    assert small[3]["recipients"] == ["trap@trap.test", "b@trap.test"]
    assert small[4:] == ("spam.example", "127.0.0.1", "127.0.0.0/24")
    # The large one is in the Maildir; its row names the file, and holds its record.
    assert large[1] == large[0] and large[2] is None
    [stored] = sinkhole.stored()
    assert stored.endswith(LARGE)
    assert large[3]["file"] == large[1] and large[3]["recipients"] == ["trap@trap.test"]
    assert not (sinkhole.maildir / "meta").exists()  # the row is the record
    assert query(postgres_url, "SELECT m.name, r.position, r.address FROM recipients r "
                               "JOIN messages m ON m.id = r.message_id ORDER BY m.id, "
                               "r.position") == [
        (small[0], 0, "trap@trap.test"), (small[0], 1, "b@trap.test"),
        (large[0], 0, "trap@trap.test")]
    report = subprocess.run([sys.executable, "-m", "trio_smtpd", "report", "--store",
                             postgres_url, "--json"], capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0, report.stderr
    views = json.loads(report.stdout)
    assert views["recipients"][0] == {"recipient": "trap@trap.test", "messages": 2,
                                      "networks": 1, "sender_domains": 1}
    assert views["networks"][0]["network"] == "127.0.0.0/24"
    assert views["days"][0]["messages"] == 2


def test_a_savedir_message_is_a_file_there_named_by_its_row(
        sinkhole_factory: Factory, postgres_url: str, tmp_path: Path) -> None:
    rules = boss_mail_rules(tmp_path)
    sinkhole = sinkhole_factory("--store", postgres_url, "--rules", str(rules))
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("big@boss.example", ["trap@trap.test"], SMALL)  # (small, even so)
    savedir = tmp_path / "boss-mail"
    [name] = os.listdir(savedir / "new")
    assert (savedir / "new" / name).read_bytes().endswith(SMALL)
    [(file, body, metadata)] = query(postgres_url, "SELECT file, body, metadata FROM messages")
    assert file == name and body is None and metadata["savedir"] == str(savedir)
    assert not (savedir / "meta").exists()


@dataclass
class Load:
    """Client threads sending numbered messages to some servers until told to stop."""

    ports: list[int]
    acknowledged: list[str] = field(default_factory=list)
    refused: list[tuple[str, int, bytes]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, threads_per_port: int, limit: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=(f"{p}-{n}", port, limit))
                   for p, port in enumerate(self.ports) for n in range(threads_per_port)]
        for thread in threads:
            thread.start()
        return threads

    def _client(self, name: str, port: int, limit: int) -> None:
        for sent in range(limit):
            if self.stop.is_set():
                return
            ident = f"{name}-{sent}"
            body = f"Subject: {ident}\r\n\r\nid={ident}\r\n".encode()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                    smtp.sendmail("load@example.org", ["trap@trap.test"], body)
            except smtplib.SMTPResponseException as exc:
                with self._lock:
                    self.refused.append((ident, exc.smtp_code, exc.smtp_error))
                time.sleep(0.05)
                continue
            with self._lock:
                self.acknowledged.append(ident)

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self}"
            time.sleep(0.05)


def stored_ids(url: str) -> list[str]:
    return [bytes(body).split(b"id=")[1].split(b"\r\n")[0].decode()
            for (body,) in query(url, "SELECT body FROM messages")]


def test_sinkholes_and_workers_write_one_database_at_once(sinkhole_factory: Factory,
                                                         postgres_url: str) -> None:
    # Started together on an empty database, a sinkhole and one with two workers (its
    # supervisor checks the schema too): they all migrate it at the same moment.
    started: dict[str, Sinkhole] = {}
    starters = [threading.Thread(target=lambda k=k, a=a: started.__setitem__(
        k, sinkhole_factory("--store", postgres_url, *a)))
        for k, a in (("single", ()), ("workers", ("--workers", "2")))]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join(60)
    single, workers = started["single"], started["workers"]
    try:
        workers.wait_for("listening", 3)  # the supervisor's line, then one per worker
        worker_pids = {str(e["pid"]) for e in workers.events("listening")[1:]}
        load = Load([single.port, workers.port])
        for thread in load.run(threads_per_port=3, limit=15):
            thread.join(120)
    finally:
        # SIGTERM: the supervisor stops its workers too (SIGKILL would orphan them).
        assert workers.stop(signal.SIGTERM) == 0
    assert load.refused == [] and len(load.acknowledged) == 90
    ids = stored_ids(postgres_url)
    assert sorted(ids) == sorted(load.acknowledged)  # each once, none lost
    writers = {pid for (pid,) in query(postgres_url, "SELECT DISTINCT (regexp_match(name, "
                                                     "'P([0-9]+)Q'))[1] FROM messages")}
    assert str(single.process.pid) in writers and writers & worker_pids
    assert writers <= worker_pids | {str(single.process.pid)}
    assert query(postgres_url, "SELECT version FROM schema_migrations") == [(1,)]


def test_the_database_going_away_gives_451_and_delivery_resumes_by_itself(
        sinkhole_factory: Factory, own_postgres_cluster: Cluster) -> None:
    # A server of its own: one stopped and started again during a test is new processes,
    # which the session's server must not be (conftest.py's postgres_cluster).
    postgres_cluster = own_postgres_cluster
    postgres_url = postgres_cluster.create_database("trap")
    sinkhole = sinkhole_factory("--store", postgres_url, "--store-timeout", "2")
    load = Load([sinkhole.port])
    threads = load.run(threads_per_port=4, limit=1000)
    try:
        load.wait(lambda: len(load.acknowledged) >= 20, 60, "deliveries")
        postgres_cluster.stop("fast")  # every connection is cut, new ones are refused
        try:
            load.wait(lambda: len(load.refused) >= 8, 60, "refusals")
        finally:
            postgres_cluster.start()
        before = len(load.acknowledged)
        load.wait(lambda: len(load.acknowledged) >= before + 20, 60, "deliveries again")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(60)
    # Refused with 451 while it was gone (never a 5xx, never a 250 for nothing)...
    assert {(code, text.split(b";")[0]) for _, code, text in load.refused} == {
        (451, b"4.3.0 Message store unavailable")}
    # ... and every message that got its 250 is in the database.
    assert set(load.acknowledged) <= set(stored_ids(postgres_url))
    assert sinkhole.process.poll() is None  # (no restart needed)
    assert any(e["outcome"] == "tempfailed" for e in sinkhole.events("message"))
