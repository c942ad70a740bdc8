"""The stores without PostgreSQL: the SQLite index beside the Maildir (the default), its
schema and migrations, its failures, and ``trio-smtpd report`` over it."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import AS_ROOT, Sinkhole
from tests.dnsserver import Unbound
from tests.wire import Wire
from trio_smtpd.maildir import CommitProcess, Maildir
from trio_smtpd.sinkhole.handler import SinkholeHandler
from trio_smtpd.sinkhole.report import VIEWS, report_command
from trio_smtpd.sinkhole.stores import (
    MaildirStore,
    MessageWriter,
    SqliteIndex,
    StoreError,
    open_store,
)
from trio_smtpd.sinkhole.stores.schema import Row, SchemaError, message_row, migrations
from trio_smtpd.testing import open_client

BODY = b"Subject: caught\r\n\r\nHello, trap.\r\n"


def make_index(tmp_path: Path) -> tuple[Maildir, SqliteIndex]:
    maildir = Maildir(tmp_path / "mail")
    maildir.create()
    index = SqliteIndex(maildir.path / "index.sqlite3")
    index.create()
    return maildir, index


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(params=["in-thread", "commit-process"])
def committer(request: pytest.FixtureRequest) -> Iterator[CommitProcess | None]:
    """Rows written in the commit batch's thread, or by the commit process (which
    writes the files too): the same rows either way."""
    process = CommitProcess() if request.param == "commit-process" else None
    yield process
    if process is not None:
        process.close()


async def test_a_message_gets_its_file_and_its_rows_and_no_sidecar(
        tmp_path: Path, committer: CommitProcess | None) -> None:
    maildir, index = make_index(tmp_path)
    handler = SinkholeHandler("mx.test", maildir,
                              store=MaildirStore(maildir, index, committer))
    async with open_client(handler=handler) as client:
        replies = await client.send_message("Spam@Example.ORG", ["a@trap.test", "b@trap.test"],
                                            BODY)
    assert replies[-1].code == 250
    [name] = os.listdir(maildir.path / "new")
    assert name in replies[-1].text
    [(file, sender, domain, size, sha256, helo, metadata, body)] = rows(
        index.path, "SELECT file, sender, sender_domain, size, sha256, helo, metadata, body "
                    "FROM messages")
    assert (file, sender, domain) == (name, "Spam@Example.ORG", "example.org")
    assert (size, sha256, helo, body) == (len(BODY), hashlib.sha256(BODY).hexdigest(),
                                          "client.test", None)
    record = json.loads(metadata)  # the whole record
    assert (record["file"], record["sha256"], record["recipients"]) == (
        name, sha256, ["a@trap.test", "b@trap.test"])
    # The row is the record: no second file per message beside it (issue 22).
    assert not (maildir.path / "meta").exists()
    assert rows(index.path, "SELECT position, address, domain FROM recipients") == [
        (0, "a@trap.test", "trap.test"), (1, "b@trap.test", "trap.test")]


async def test_a_message_whose_row_cannot_be_written_is_refused_and_not_kept(
        tmp_path: Path, committer: CommitProcess | None) -> None:
    maildir, index = make_index(tmp_path)
    with sqlite3.connect(index.path) as other:  # the index breaks behind the server's back
        other.execute("DROP TABLE recipients")
    handler = SinkholeHandler("mx.test", maildir,
                              store=MaildirStore(maildir, index, committer))
    async with open_client(handler=handler) as client:
        replies = await client.send_message("a@example.org", ["b@trap.test"], BODY)
    assert replies[-1].code == 451
    assert replies[-1].text.startswith("4.3.0 Message store unavailable")
    # Never a file in new/ without its row, nor a row without its file.
    assert os.listdir(maildir.path / "new") == []
    assert rows(index.path, "SELECT count(*) FROM messages") == [(0,)]


async def test_concurrent_messages_share_transactions_and_none_is_lost(
        tmp_path: Path) -> None:
    maildir, index = make_index(tmp_path)
    store = MaildirStore(maildir, index)
    assert index._connection is not None
    transactions: list[str] = []
    index._connection.set_trace_callback(
        lambda sql: transactions.append(sql) if sql.startswith("BEGIN") else None)
    names: list[str] = []
    # The first batch's rows wait until every other message waits for its commit: a
    # worker thread quicker than the event loop would otherwise make more batches.
    everyone_waits = threading.Event()
    write = index.write

    def held(rows: list[Row]) -> list[OSError | None]:
        assert everyone_waits.wait(10)
        return write(rows)

    index.write = held  # type: ignore[method-assign]

    async def deliver(number: int) -> None:
        writer = store.open()
        await writer.write(b"Subject: %d\r\n\r\nbody\r\n" % number)
        name = writer.name
        names.append(await writer.commit(record(name, recipients=[f"r{number}@trap.test"])))

    async with trio.open_nursery() as nursery:
        for number in range(40):
            nursery.start_soon(deliver, number)
        await trio.testing.wait_all_tasks_blocked()
        everyone_waits.set()
    assert sorted(os.listdir(maildir.path / "new")) == sorted(names)
    assert rows(index.path, "SELECT count(*) FROM messages") == [(40,)]
    assert rows(index.path, "SELECT count(*) FROM recipients") == [(40,)]
    # The first batch took what had come when its worker thread began (the first
    # message, or all of them); the rest came meanwhile and went together in the next:
    # its files, then one transaction.
    assert 1 <= len(transactions) <= 2


def test_a_failing_row_of_a_batch_fails_alone(tmp_path: Path) -> None:
    """One row a constraint refuses (a name the index has) in a batch: only that row's
    message is refused; the others are committed. The common path stays one transaction
    per batch."""
    _, index = make_index(tmp_path)

    def row(name: str) -> Any:
        return message_row(record(name), host="h", file=name, body=None)

    assert index.write([row("taken")]) == [None]
    assert index._connection is not None
    transactions: list[str] = []
    index._connection.set_trace_callback(
        lambda sql: transactions.append(sql) if sql.startswith("BEGIN") else None)
    outcomes = index.write([row("good1"), row("taken"), row("good2")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], StoreError) and "UNIQUE" in str(outcomes[1])
    assert rows(index.path, "SELECT name FROM messages ORDER BY id") == [
        ("taken",), ("good1",), ("good2",)]
    assert rows(index.path, "SELECT count(*) FROM recipients") == [(3,)]
    transactions.clear()
    assert index.write([row(f"more{n}") for n in range(4)]) == [None] * 4
    assert len(transactions) == 1  # four rows, one transaction


async def test_the_commit_process_writes_the_rows_and_refuses_one_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a commit process, the rows are its to write (never this process's), in one
    # transaction; a row a constraint refuses fails its message alone, whose file is
    # taken back out of new/, as in the batch's own thread.
    maildir, index = make_index(tmp_path)
    process = CommitProcess()
    store = MaildirStore(maildir, index, process)

    def not_here(rows: list[Row]) -> list[OSError | None]:
        raise AssertionError("rows written in the server's process")

    monkeypatch.setattr(index, "write", not_here)
    writers = [store.open() for _ in range(3)]
    for number, writer in enumerate(writers):
        await writer.write(b"Subject: %d\r\n\r\nbody\r\n" % number)
    taken = writers[1].name
    with sqlite3.connect(index.path) as other:
        other.execute("INSERT INTO messages (name, host, received, session, sender, size, "
                      "sha256, metadata) VALUES (?, 'h', '', '', '', 0, '', '{}')", (taken,))
    outcomes: dict[str, object] = {}
    listed = [{"list": "zen.example", "kind": "dnsbl", "subject": "192.0.2.7",
               "codes": ["127.0.0.2"], "reason": "listed"}]

    async def commit(writer: MessageWriter) -> None:
        try:
            outcomes[writer.name] = await writer.commit(record(
                writer.name, recipients=["a@trap.test", "b@trap.test"], listings=listed))
        except StoreError as exc:
            outcomes[writer.name] = exc

    try:
        async with trio.open_nursery() as nursery:
            for writer in writers:
                nursery.start_soon(commit, writer)
    finally:
        await store.aclose()
    good = [writers[0].name, writers[2].name]
    assert [outcomes[name] for name in good] == good
    assert isinstance(outcomes[taken], StoreError) and "UNIQUE" in str(outcomes[taken])
    assert sorted(os.listdir(maildir.path / "new")) == sorted(good)
    assert rows(index.path, "SELECT m.name, r.address, l.list FROM messages m JOIN "
                            "recipients r ON r.message_id = m.id JOIN listings l ON "
                            "l.message_id = m.id ORDER BY m.name, r.position") == [
        (name, address, "zen.example") for name in sorted(good)
        for address in ("a@trap.test", "b@trap.test")]
    assert not process.usable  # (the store's aclose ended it)


async def test_a_record_that_makes_no_row_keeps_its_message_out_with_a_commit_process(
        tmp_path: Path) -> None:
    maildir, index = make_index(tmp_path)
    store = MaildirStore(maildir, index, CommitProcess())
    writer = store.open()
    await writer.write(b"Subject: x\r\n\r\nbody\r\n")
    try:
        with pytest.raises(StoreError, match="indexing the message failed"):
            await writer.commit({"file": writer.name})  # (no sender, no recipients...)
    finally:
        await store.aclose()
    assert os.listdir(maildir.path / "new") == [] and os.listdir(maildir.path / "tmp") == []
    assert rows(index.path, "SELECT count(*) FROM messages") == [(0,)]


def test_migrations_apply_once_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    maildir, index = make_index(tmp_path)
    index.close()
    versions = [m.version for m in migrations("sqlite")]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert [m.version for m in migrations("postgresql")] == versions
    open_store("sqlite", maildir, body_limit=0, timeout=1, connections=1)  # again: no-op
    assert rows(index.path, "SELECT version FROM schema_migrations") == [(v,) for v in versions]
    with sqlite3.connect(index.path) as connection:
        connection.execute("INSERT INTO schema_migrations VALUES (999, 'future', '')")
    with pytest.raises(SchemaError, match="newer"):
        open_store("sqlite", maildir, body_limit=0, timeout=1, connections=1)


def record(name: str, *, peer: str = "192.0.2.7:1234", helo: str = "bot.example",
           sender: str = "x@spam.example", recipients: list[str] | None = None,
           received: str = "2026-11-25T03:41:26+00:00",
           listings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A record as records.message_record makes it."""
    return {"file": name, "session": "1.1", "peer": peer, "helo": helo, "auth": None,
            "tls": None, "sender": sender, "recipients": recipients or ["trap@trap.test"],
            "size": 10, "sha256": "0" * 64, "rule": None, "received": received,
            "dns": {"rdns": [], "fcrdns": "nodns", "confirmed": None,
                    "listings": listings or []},
            "authentication_results": None}


def test_a_row_has_the_client_network_and_the_listings() -> None:
    listed = [{"list": "zen.example", "kind": "dnsbl", "subject": "2001:db8::7",
               "codes": ["127.0.0.2", "127.0.0.4"], "reason": "spam source"}]
    row = message_row(record("n", peer="2001:db8:1:2::7:25", sender="",
                             listings=listed), host="h", file=None, body=b"x")
    values = dict(zip(["name", "file", "host", "received", "session", "peer_ip",
                       "peer_port", "network"], row.message, strict=False))
    assert values["peer_ip"] == "2001:db8:1:2::7" and values["peer_port"] == 25
    assert values["network"] == "2001:db8:1::/48"
    assert row.listings == (("zen.example", "dnsbl", "2001:db8::7", "127.0.0.2,127.0.0.4",
                             "spam source"),)
    assert row.message[-1] == b"x" and row.message[14] is None  # sender_domain of <>


def fill(tmp_path: Path) -> Path:
    maildir, index = make_index(tmp_path)
    listed = [{"list": "zen.example", "kind": "dnsbl", "subject": "192.0.2.7",
               "codes": ["127.0.0.2"], "reason": ""}]
    samples = [
        record("a", peer="192.0.2.7:1", recipients=["trap@trap.test", "x@trap.test"],
               listings=listed),
        record("b", peer="192.0.2.9:1", helo="bot.example", listings=listed),
        record("c", peer="198.51.100.1:1", helo="other.example", sender="",
               received="2026-11-24T23:59:59+00:00"),
    ]
    assert index.write([message_row(sample, host="h", file=sample["file"], body=None)
                        for sample in samples]) == [None] * len(samples)
    index.close()
    return maildir.path


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = report_command(list(args))
    return status, capsys.readouterr().out


def test_report_views_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = report(capsys, "--maildir", str(fill(tmp_path)), "--json")
    assert status == 0
    views = json.loads(out)
    assert list(views) == list(VIEWS)
    assert [(r["network"], r["messages"], r["clients"]) for r in views["networks"]] == [
        ("192.0.2.0/24", 2, 2), ("198.51.100.0/24", 1, 1)]
    assert [(r["helo"], r["messages"]) for r in views["helo"]] == [
        ("bot.example", 2), ("other.example", 1)]
    assert [(r["sender_domain"], r["messages"]) for r in views["senders"]] == [
        ("spam.example", 2), ("", 1)]
    assert [(r["recipient"], r["messages"]) for r in views["recipients"]] == [
        ("trap@trap.test", 3), ("x@trap.test", 1)]
    assert [(r["list"], r["messages"], r["clients"]) for r in views["listings"]] == [
        ("zen.example", 2, 2)]
    assert [(r["day"], r["messages"]) for r in views["days"]] == [
        ("2026-11-25", 2), ("2026-11-24", 1)]


def test_report_as_a_table_and_its_sql(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = fill(tmp_path)
    status, out = report(capsys, "--maildir", str(folder), "--view", "helo", "--limit", "1")
    assert status == 0
    assert out.splitlines() == ["top HELO names", "helo         messages  networks",
                                "-----------  --------  --------",
                                "bot.example         2         1"]
    status, out = report(capsys, "--sql", "--view", "days", "--store", "postgresql://x/y")
    assert status == 0 and "to_char(received AT TIME ZONE 'UTC'" in out
    assert "%(since)s" in out and ":since" not in out
    # No index there: one line, status 2 (as the program's configuration errors).
    status, _ = report(capsys, "--maildir", str(tmp_path / "nowhere"))
    assert status == 2


def test_report_reads_the_index_of_a_running_server(sinkhole_factory: Any) -> None:
    import smtplib

    sinkhole: Sinkhole = sinkhole_factory()
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@spam.example", ["trap@trap.test"], BODY)
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "report", "--maildir",
                             str(sinkhole.maildir), "--view", "recipients", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recipients"][0]["recipient"] == "trap@trap.test"
    [listening] = sinkhole.events("listening")
    assert listening["store"] == f"sqlite:{sinkhole.maildir / 'index.sqlite3'}"


@pytest.mark.parametrize(("args", "message"), [
    (["--store", "nonsense"], "expected sqlite, maildir or postgresql"),
    (["--store", "maildir", "--discard"], "--store needs somewhere to store"),
    (["--store-timeout", "0"], "--store-timeout"),
    # Nothing listens there: refused at once, exit 2 before anything listens.
    (["--store", "postgresql://nobody@127.0.0.1:1/none"], "cannot use the store"),
    # A hash names a file in one Maildir, not a message of a fleet's database.
    (["--store", "postgresql://nobody@127.0.0.1:1/none", "--save-hash", "msg"],
     "--save-hash is for --store sqlite or maildir"),
])
def test_a_store_that_cannot_be_used_is_a_configuration_error(
        tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                             str(tmp_path / "mail"), "--no-dns", "--listen", "127.0.0.1:0",
                             *AS_ROOT, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_plain_maildir_store_has_no_index(sinkhole_factory: Any) -> None:
    import smtplib

    sinkhole: Sinkhole = sinkhole_factory("--store", "maildir")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@spam.example", ["trap@trap.test"], BODY)
    assert len(sinkhole.stored()) == 1
    assert len(os.listdir(sinkhole.maildir / "meta")) == 1
    assert not (sinkhole.maildir / "index.sqlite3").exists()


async def test_an_index_closed_under_load_refuses_rather_than_loses(tmp_path: Path) -> None:
    maildir, index = make_index(tmp_path)
    store = MaildirStore(maildir, index)
    await store.aclose()
    handler = SinkholeHandler("mx.test", maildir, store=store)
    async with open_client(handler=handler) as client:
        replies = await client.send_message("a@example.org", ["b@trap.test"], BODY)
    assert replies[-1].code == 451
    assert os.listdir(maildir.path / "new") == []


def test_a_row_has_the_whole_record_with_verified_hash_named_messages(
        sinkhole_factory: Any, dns_server: Unbound) -> None:
    """Verified messages get their trace headers at commit and --save-hash names them
    then: the row names the file, carries both hashes and the authentication results,
    and a message stored already gets no second row."""
    sinkhole: Sinkhole = sinkhole_factory("--save-hash", "msg", "--dns-server",
                                          dns_server.address)
    body = b"Subject: verified\r\n\r\nthe body\r\n"
    with Wire(sinkhole.port) as client:
        replies = [client.message("s@good.test", ["a@example.net"], body, ehlo="c.test")
                   for _ in range(2)]
    name = hashlib.sha256(body).hexdigest()
    assert replies == [f"250 2.0.0 queued as {name}\r\n".encode()] * 2
    [(row_name, file, sha256, body_sha256, spf, dkim, arc, dmarc, metadata)] = rows(
        sinkhole.maildir / "index.sqlite3",
        "SELECT name, file, sha256, body_sha256, spf, dkim, arc, dmarc, metadata "
        "FROM messages")
    assert row_name == file == sha256 == name
    record = json.loads(metadata)
    assert body_sha256 == record["body_sha256"] == hashlib.sha256(b"the body\r\n").hexdigest()
    results = record["authentication_results"]
    assert spf == results["spf"]["result"] and spf is not None
    assert dkim == (",".join(d["result"] for d in results["dkim"]) or "none")
    assert arc == results["arc"]["result"] and dmarc == results["dmarc"]["result"]


def boss_mail_rules(tmp_path: Path) -> Path:
    """A rules file that saves the boss's mail in the Maildir ``boss-mail``."""
    rules = tmp_path / "rules.toml"
    rules.write_text("""
[[rule]]
name = "vip"
phase = "mail"
action = "accept"
savedir = "boss-mail"
[rule.match]
sender = ["@boss.example"]
""")
    return rules


def test_a_savedir_message_is_a_file_there_and_a_row_in_the_index(
        sinkhole_factory: Any, tmp_path: Path) -> None:
    rules = boss_mail_rules(tmp_path)
    sinkhole: Sinkhole = sinkhole_factory("--rules", str(rules))
    with Wire(sinkhole.port) as client:
        assert client.message("big@boss.example", ["me@example.net"], BODY,
                              ehlo="c.test").startswith(b"250")
    savedir = tmp_path / "boss-mail"
    [name] = os.listdir(savedir / "new")
    assert os.listdir(sinkhole.maildir / "new") == []
    [(file, metadata)] = rows(sinkhole.maildir / "index.sqlite3",
                              "SELECT file, metadata FROM messages")
    assert file == name and json.loads(metadata)["savedir"] == str(savedir)
    assert not (savedir / "meta").exists()


def test_a_hash_named_message_the_index_holds_is_stored_already_wherever_its_file(
        sinkhole_factory: Any, tmp_path: Path) -> None:
    """With the index, its row is the memory of a hash-named message: once its file has
    left new/ (an operator took it), or for a session whose rule saves to a savedir, the
    same message is a duplicate (250, the same name, nothing stored), never 451 again and
    again (the name is unique in the index)."""
    sinkhole: Sinkhole = sinkhole_factory("--save-hash", "msg",
                                          "--rules", str(boss_mail_rules(tmp_path)))
    name = hashlib.sha256(BODY).hexdigest()
    queued = f"250 2.0.0 queued as {name}\r\n".encode()
    index, new = sinkhole.maildir / "index.sqlite3", sinkhole.maildir / "new"
    def send(sender: str) -> bytes:  # (a session each: a savedir is the session's)
        with Wire(sinkhole.port) as client:
            return client.message(sender, ["me@example.net"], BODY, ehlo="c.test")

    assert send("a@spam.example") == queued
    # The savedir has no such file, but the index has the message.
    assert send("big@boss.example") == queued
    savedir_new = tmp_path / "boss-mail" / "new"
    assert not savedir_new.exists() or os.listdir(savedir_new) == []
    (new / name).unlink()  # the operator processed it
    assert [send("a@spam.example") for _ in range(2)] == [queued] * 2
    assert os.listdir(new) == [] and os.listdir(sinkhole.maildir / "tmp") == []
    # The first receipt's row stays, the only one: no row without the file it recorded
    # being stored, and no file stored without a row.
    assert rows(index, "SELECT name, file, sender FROM messages") == [
        (name, name, "a@spam.example")]


@pytest.mark.parametrize("days", ["99999999", "1000000000", "-1"])
def test_report_days_out_of_range_is_a_one_line_error(tmp_path: Path, days: str) -> None:
    # Found by review (2026-12-02): a --days past the calendar's end was a traceback
    # (OverflowError), status 1.
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "report", "--maildir",
                             str(tmp_path / "mail"), "--days", days],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--days" in result.stderr and "Traceback" not in result.stderr


async def test_a_record_that_makes_no_row_is_a_store_error_and_leaves_no_file(
        tmp_path: Path) -> None:
    # A record the index cannot take (here, one missing its fields: a bug) must end as
    # a temporary failure with neither the file nor a row, never a 250 nor a file
    # without its row.
    maildir, index = make_index(tmp_path)
    store = MaildirStore(maildir, index)
    writer = store.open()
    await writer.write(b"Subject: x\r\n\r\nbody\r\n")
    with pytest.raises(StoreError, match="indexing the message failed"):
        await writer.commit({"file": writer.name})
    assert os.listdir(maildir.path / "new") == []
    assert rows(index.path, "SELECT count(*) FROM messages") == [(0,)]
