"""End to end: the real ``trio-smtpd`` program as a subprocess, real clients, real Maildir."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Sinkhole, require_program
from trio_smtpd.sinkhole.passwords import hash_password

Factory = Callable[..., Sinkhole]

BODY = b"From: a@example.org\r\nSubject: hello\r\n\r\nline one\r\n.leading dot\r\n"


def headers_and_body(stored: bytes) -> tuple[list[str], bytes]:
    """Split our trace headers from the message exactly as the client sent it."""
    lines = stored.split(b"\r\n")
    ours: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].decode()
        if line.startswith(("Return-Path:", "X-Original-To:", "Authentication-Results:",
                            "Received:")):
            ours.append(line)
        elif line.startswith("\t") and ours:
            ours[-1] += "\n" + line
        else:
            break
        index += 1
    return ours, b"\r\n".join(lines[index:])


def test_smtplib_message_lands_byte_exact(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory()
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        code, text = client.ehlo("client.test")
        assert code == 250 and b"PIPELINING" in text
        client.sendmail("a@example.org", ["b@example.net"], BODY)
    [stored] = sinkhole.stored()
    ours, message = headers_and_body(stored)
    assert message == BODY
    assert ours[0] == "Return-Path: <a@example.org>"
    assert ours[1] == "X-Original-To: b@example.net"  # bare, as Postfix writes it
    received = ours[2]
    assert received.startswith("Received: from client.test (unknown [127.0.0.1])")
    assert "by mx.test (trio_smtpd)" in received and "with ESMTP" in received
    assert "for <b@example.net>" in received
    [entry] = sinkhole.events("message")
    # The id is the stored file's, the one the client was told; the date is in UTC.
    assert f"\n\tid {entry['file']}\n" in received
    assert received.endswith(" +0000 (UTC)")
    assert entry["sender"] == "a@example.org" and entry["recipients"] == ["b@example.net"]
    assert entry["outcome"] == "accepted" and entry["size"] == len(BODY)
    assert entry["file"] in os.listdir(sinkhole.maildir / "new")
    assert entry["helo"] == "client.test"
    assert sinkhole.stop() == 0


def test_discard_stores_nothing_but_logs(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--discard")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.net"], BODY)
    assert not (sinkhole.maildir / "new").exists()
    [entry] = sinkhole.events("message")
    assert entry["outcome"] == "accepted" and entry["file"] is None


def test_lmtp_per_recipient_replies(sinkhole_factory: Factory) -> None:
    # smtplib.LMTP reads only one reply after DATA, so speak LMTP by hand (RFC 2033 4.2).
    sinkhole = sinkhole_factory("--lmtp")
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while (line := reader.readline())[3:4] == b"-":
                pass
            return line

        assert reply().startswith(b"220 ")
        sock.sendall(b"LHLO client.test\r\n")
        assert reply().startswith(b"250 ")
        sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                     b"RCPT TO:<c@example.net>\r\nDATA\r\n")
        assert [reply()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        sock.sendall(BODY.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        per_recipient = [reply(), reply()]
        assert all(line.startswith(b"250 2.0.0 queued as ") for line in per_recipient)
        sock.sendall(b"QUIT\r\n")
        assert reply().startswith(b"221 ")
    [stored] = sinkhole.stored()
    ours, message = headers_and_body(stored)
    assert message == BODY
    assert "with LMTP" in ours[-1]
    assert ours[1:3] == ["X-Original-To: b@example.net", "X-Original-To: c@example.net"]


def test_starttls_and_auth_with_trustme_certificate(
        sinkhole_factory: Factory, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext, tmp_path: Path) -> None:
    cert, key, _ = cert_files
    auth_file = tmp_path / "users"
    auth_file.write_text(f"# test users\nalice:{hash_password('s3cret', log2_n=10)}\n")
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key),
                                "--auth-file", str(auth_file))
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        client.starttls(context=client_tls)
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", "s3cret")
        client.sendmail("alice@example.org", ["b@example.net"], BODY)
    [stored] = sinkhole.stored()
    ours, _ = headers_and_body(stored)
    assert "with ESMTPSA" in ours[-1] and "using TLSv1" in ours[-1]
    [entry] = sinkhole.events("message")
    assert entry["auth"] == "alice" and str(entry["tls"]).startswith("TLSv1")


def test_implicit_tls_listener(sinkhole_factory: Factory,
                               cert_files: tuple[Path, Path, Path],
                               client_tls: ssl.SSLContext) -> None:
    cert, key, _ = cert_files
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key), tls_listen=1)
    tls_port = sinkhole.ports[1]
    with smtplib.SMTP_SSL("127.0.0.1", tls_port, context=client_tls, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.net"], BODY)
    assert len(sinkhole.stored()) == 1


def test_size_and_recipient_limits(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--max-message-size", "100", "--max-recipients", "2")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.ehlo("c")
        assert client.esmtp_features["size"] == "100"
        client.mail("a@example.org")
        assert client.rcpt("b@example.net")[0] == 250
        assert client.rcpt("c@example.net")[0] == 250
        assert client.rcpt("d@example.net")[0] == 452
        code, _ = client.data(b"x" * 200)
        assert code == 552
    assert not os.listdir(sinkhole.maildir / "new")
    [entry] = sinkhole.events("message")
    assert entry["outcome"] == "refused" and str(entry["reply"]).startswith("552 5.3.4")


@pytest.mark.interop
def test_swaks_starttls_auth_pipelining(sinkhole_factory: Factory,
                                        cert_files: tuple[Path, Path, Path],
                                        tmp_path: Path) -> None:
    swaks = require_program("swaks")
    cert, key, ca_file = cert_files
    auth_file = tmp_path / "users"
    auth_file.write_text(f"alice:{hash_password('s3cret', log2_n=10)}\n")
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key),
                                "--auth-file", str(auth_file))
    result = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(sinkhole.port), "--from",
         "alice@example.org", "--to", "b@example.net,c@example.net", "--tls",
         "--tls-ca-path", str(ca_file), "--tls-verify", "--auth", "PLAIN", "--auth-user",
         "alice", "--auth-password", "s3cret", "--pipeline", "--helo", "swaks.test",
         "--body", "swaks body", "--timeout", "10"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout
    [stored] = sinkhole.stored()
    ours, message = headers_and_body(stored)
    assert b"swaks body" in message
    assert "with ESMTPSA" in ours[-1]


@pytest.mark.interop
def test_smtp_source_load(sinkhole_factory: Factory) -> None:
    smtp_source = require_program("smtp-source")
    sinkhole = sinkhole_factory()
    result = subprocess.run(
        [smtp_source, "-s", "5", "-m", "40", "-l", "2000", "-f", "src@example.org",
         "-t", "dst@example.net", f"127.0.0.1:{sinkhole.port}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    sinkhole.wait_for("message", 40)
    stored = sinkhole.stored()
    assert len(stored) == 40
    for message in stored:
        ours, body = headers_and_body(message)
        assert ours[0] == "Return-Path: <src@example.org>"
        assert len(body) >= 2000


def test_config_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                               str(tmp_path / "m"), *args], capture_output=True, text=True,
                              timeout=60)

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        ("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "k.pem")),
        ("--listen", "nonsense"),
        ("--listen", f"127.0.0.1:{busy.getsockname()[1]}"),
        ("--maildir", str(blocker / "sub")),
        ("--auth-file", str(tmp_path / "missing-users")),
        ("--tls-listen", "127.0.0.1:0"),
    ]
    try:
        for args in cases:
            result = run(*args)
            assert result.returncode == 2, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("trio-smtpd: "), (args, lines)
    finally:
        busy.close()


def test_version_help_and_hash_password() -> None:
    version = subprocess.run([sys.executable, "-m", "trio_smtpd", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("trio-smtpd 0.")
    helptext = subprocess.run([sys.executable, "-m", "trio_smtpd", "--help"],
                              capture_output=True, text=True, timeout=60).stdout
    for option in ["--listen", "--maildir", "--hostname", "--lmtp", "--tls-cert", "--tls-key",
                   "--tls-listen", "--auth-file", "--max-message-size", "--max-recipients",
                   "--timeout", "--max-connections", "--discard", "--log-format",
                   "--version"]:
        assert option in helptext
    hashed = subprocess.run([sys.executable, "-m", "trio_smtpd", "hash-password"],
                            input="pw\n", capture_output=True, text=True, timeout=60)
    assert hashed.returncode == 0 and hashed.stdout.startswith("scrypt$")
    from trio_smtpd.sinkhole.passwords import verify_password
    assert verify_password("pw", hashed.stdout.strip())
    assert not verify_password("other", hashed.stdout.strip())


def test_sigterm_is_graceful_and_second_signal_exits(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory()
    idle = socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10)
    assert idle.recv(100).startswith(b"220")
    assert sinkhole.stop(signal.SIGTERM) == 0
    # The idle session was told why before the connection closed.
    assert idle.recv(100).startswith(b"421")
    idle.close()

    second = sinkhole_factory()
    busy = [socket.create_connection(("127.0.0.1", second.port), timeout=10)
            for _ in range(2)]
    for sock in busy:
        sock.recv(100)
        sock.sendall(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n")
        replies = b""
        while not replies.endswith(b"\r\n") or b"\r\n354 " not in b"\r\n" + replies:
            chunk = sock.recv(4096)  # (the socket's 10 s timeout bounds each wait)
            assert chunk, replies
            replies += chunk
    # Both sessions are in DATA. After the signal the server waits for them: one
    # finishes its message and has it acknowledged, the other keeps the server waiting.
    second.process.send_signal(signal.SIGTERM)
    second.wait_for("shutdown")
    busy[0].sendall(b"Subject: finished in grace\r\n\r\nbody\r\n.\r\n")
    assert busy[0].recv(100).startswith(b"250 2.0.0 queued as ")
    assert second.process.poll() is None  # waiting for the transaction still in DATA
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(10) != 0
    # The log lines kept for writing together were written before the immediate exit.
    assert [line["signal"] for line in second.events("exit")] == ["SIGTERM"]
    for sock in busy:
        sock.close()
    [stored] = second.stored()  # the acknowledged message, not the abandoned one
    assert stored.endswith(b"Subject: finished in grace\r\n\r\nbody\r\n")


def test_slow_client_times_out_with_421(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--timeout", "0.5")
    client = socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10)
    assert client.recv(100).startswith(b"220")
    client.sendall(b"EHLO c\r\n")
    data = b""  # read until the server closes: its 421 comes after 0.5 s of silence
    while chunk := client.recv(4096):
        data += chunk
    assert data.splitlines()[-1].startswith(b"421 4.4.2")
    client.close()


def test_storage_failure_gives_451_and_server_keeps_running(
        sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory()
    tmp = sinkhole.maildir / "tmp"
    # A file where tmp/ should be: writes fail (ENOTDIR) even for root.
    tmp.rmdir()
    tmp.write_bytes(b"")
    try:
        with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPDataError) as failure:
                client.sendmail("a@example.org", ["b@example.net"], BODY)
            assert failure.value.smtp_code == 451
    finally:
        tmp.unlink()
        tmp.mkdir()
    assert sinkhole.events("message")[0]["outcome"] == "tempfailed"
    assert not os.listdir(sinkhole.maildir / "new")
    # The disk is back: so is delivery, without a restart.
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.net"], BODY)
    assert len(sinkhole.stored()) == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so that the disk really fills up (ENOSPC); room, once emptied, for
    a message and the SQLite index with its write-ahead log."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        message = f"cannot mount a tmpfs here ({result.stderr.strip()}); CI runs as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_gives_452_and_delivery_resumes(sinkhole_factory: Factory,
                                                  small_disk: Path) -> None:
    maildir = small_disk / "maildir"
    sinkhole = sinkhole_factory("--maildir", str(maildir))  # the last --maildir wins
    sinkhole.maildir = maildir
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    big = b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 2000
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as failure:
            client.sendmail("a@example.org", ["b@example.net"], big)
        assert failure.value.smtp_code == 452
        assert b"4.3.1" in failure.value.smtp_error
        # The session is still usable; the disk comes back; so does delivery.
        filler.unlink()
        client.sendmail("a@example.org", ["b@example.net"], big)
    assert os.listdir(maildir / "tmp") == []
    [stored] = sinkhole.stored()
    assert stored.endswith(big)
    outcomes = [e["outcome"] for e in sinkhole.events("message")]
    assert outcomes == ["tempfailed", "accepted"]
