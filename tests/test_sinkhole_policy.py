"""Sinkhole policy options: TLS fallback after failed handshakes, and the tarpit."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.conftest import AS_ROOT, Sinkhole
from trio_smtpd.sinkhole.tlsfallback import TLSFallback, parse_fallback

Factory = Callable[..., Sinkhole]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fallback_counts_failures_within_the_window() -> None:
    clock = FakeClock()
    fallback = TLSFallback(failures=2, hours=1, clock=clock)
    assert fallback.offer_starttls("192.0.2.1")
    fallback.record_failure("192.0.2.1")
    assert fallback.offer_starttls("192.0.2.1")  # one failure: still offered
    fallback.record_failure("192.0.2.1")
    assert not fallback.offer_starttls("192.0.2.1")  # at the limit: withheld
    assert fallback.offer_starttls("192.0.2.2")  # other addresses unaffected
    clock.now += 3601
    assert fallback.offer_starttls("192.0.2.1")  # the failures have aged out


def test_fallback_memory_is_bounded() -> None:
    fallback = TLSFallback(failures=1, hours=1, max_addresses=3)
    for n in range(10):
        fallback.record_failure(f"192.0.2.{n}")
    assert [fallback.offer_starttls(f"192.0.2.{n}") for n in range(10)] == [True] * 7 + [
        False] * 3


@pytest.mark.parametrize("text", ["3", "0:1", "x:1", "3:0", "3:-1", ":", "3:nan", "3:inf",
                                  "3:1e400", "3:x"])
def test_fallback_option_syntax(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fallback(text)
    assert parse_fallback("3:24") == (3, 24.0)


def ehlo_lines(port: int, source: str = "127.0.0.1") -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO c\r\n")
        lines = []
        while (line := reader.readline())[3:4] == b"-":
            lines.append(line.strip())
        lines.append(line.strip())
        sock.sendall(b"QUIT\r\n")
        return lines


def starttls(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"EHLO c\r\n")
    while reader.readline()[3:4] == b"-":
        pass
    sock.sendall(b"STARTTLS\r\n")
    assert reader.readline().startswith(b"220")
    return sock


def until_closed(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    sock.close()


def abandoned_handshake(port: int, garbage: bytes = b"") -> None:
    """STARTTLS, then no ClientHello: gone at once, or bytes that are not TLS."""
    sock = starttls(port)
    if garbage:
        sock.sendall(garbage)
        until_closed(sock)
    sock.close()


def broken_handshake(port: int) -> None:
    """A real ClientHello, then the client refuses our certificate: its TLS and ours
    do not work together."""
    sock = starttls(port)
    with pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(sock, server_hostname="mx.test")
    sock.close()


def test_tls_fallback_through_the_program(sinkhole_factory: Factory,
                                          cert_files: tuple[Path, Path, Path]) -> None:
    cert, key, _ = cert_files
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key),
                                "--tls-fallback", "2:1")
    assert b"250-STARTTLS" in ehlo_lines(sinkhole.port)
    # Handshakes that never got a ClientHello do not count (issue 17): whoever can cut
    # connections on the path could otherwise force plaintext.
    abandoned_handshake(sinkhole.port)
    abandoned_handshake(sinkhole.port)
    abandoned_handshake(sinkhole.port, b"this is not a TLS ClientHello\r\n" * 4)
    sinkhole.wait_for("close", 4)
    assert b"250-STARTTLS" in ehlo_lines(sinkhole.port)
    broken_handshake(sinkhole.port)
    assert b"250-STARTTLS" in ehlo_lines(sinkhole.port)  # one failure is not enough
    broken_handshake(sinkhole.port)
    deadline = time.monotonic() + 10
    while b"250-STARTTLS" in ehlo_lines(sinkhole.port):
        assert time.monotonic() < deadline, "STARTTLS still offered after two failures"
        time.sleep(0.05)
    # Another address still gets STARTTLS; the withheld one is logged.
    assert b"250-STARTTLS" in ehlo_lines(sinkhole.port, source="127.0.0.2")
    assert any(e.get("starttls") == "withheld" for e in sinkhole.events("connect"))


def test_tarpit_delays_replies(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--tarpit", "0.4")
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
        start = time.monotonic()
        assert sock.recv(200).startswith(b"220")
        sock.sendall(b"NOOP\r\n")
        assert sock.recv(200).startswith(b"250")
        # A behaviour, not a speed: two batches of replies, each held back 0.4 s.
        assert time.monotonic() - start >= 0.8


@pytest.mark.parametrize("args", [("--tls-fallback", "nonsense"), ("--tarpit", "-1")])
def test_policy_option_errors_exit_2(args: tuple[str, str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                             str(tmp_path / "m"), *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("trio-smtpd: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("hours", ["nan", "inf", "-inf", "1e400", "72"])
def test_tls_fallback_hours_must_be_finite(hours: str, tmp_path: Path) -> None:
    # NaN or infinite hours turned the fallback silently off (every comparison with the
    # cutoff false); they are refused like every other duration.
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--check", "--maildir",
                             str(tmp_path / "m"), *AS_ROOT, "--tls-fallback", f"1:{hours}"],
                            capture_output=True, text=True, timeout=60)
    if hours == "72":  # (the check itself passes a good value)
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    assert result.stderr == ("trio-smtpd: --tls-fallback: HOURS must be a finite number of "
                             f"hours, more than 0 (not {hours})\n")


def test_save_then_reject_stores_and_refuses(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--save-then-reject")
    body = b"Subject: sample\r\n\r\nkeep me\r\n"
    with (smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client,
          pytest.raises(smtplib.SMTPDataError) as refused):
        client.sendmail("spammer@example.org", ["trap@example.net"], body)
    assert refused.value.smtp_code == 554
    text = refused.value.smtp_error.decode()
    [stored] = sinkhole.stored()
    assert stored.endswith(body)
    [name] = [n for n in (sinkhole.maildir / "new").iterdir()]
    assert text == f"5.7.1 Message rejected; saved as {name.name}"
    [entry] = sinkhole.events("message")
    assert entry["outcome"] == "saved-then-rejected" and entry["file"] == name.name


def test_certificates_by_sni_and_the_message_record(
        sinkhole_factory: Factory, cert_files: tuple[Path, Path, Path], ca: trustme.CA,
        client_tls: ssl.SSLContext, tmp_path: Path) -> None:
    cert, key, _ = cert_files
    extra = []
    for name in ("other.test", "*.wild.test"):
        leaf = ca.issue_cert(name)
        stem = tmp_path / name.replace("*", "star")
        leaf.cert_chain_pems[0].write_to_path(str(stem) + ".crt")
        leaf.private_key_pem.write_to_path(str(stem) + ".key")
        extra += ["--tls-sni", f"{name}={stem}.crt:{stem}.key"]
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key), *extra)
    body = b"Subject: sni\r\n\r\nhello\r\n"

    def send(server_name: str) -> None:
        with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
            client._host = server_name  # what smtplib sends as SNI and verifies against
            client.starttls(context=client_tls)  # fails unless that name's cert is served
            client.sendmail("a@example.org", ["b@example.net"], body)

    for name in ("other.test", "a.wild.test", "mx.test"):
        send(name)
    with pytest.raises(ssl.SSLCertVerificationError):
        send("b.a.wild.test")  # a wildcard covers one label only: the default cert
    assert [e["sni"] for e in sinkhole.events("message")] == [
        "other.test", "a.wild.test", "mx.test"]
    files = sorted((sinkhole.maildir / "new").iterdir())
    assert len(files) == 3
    for stored in files:
        meta = sinkhole.record(stored.name)
        assert meta["file"] == stored.name
        assert meta["sha256"] == hashlib.sha256(body).hexdigest()
        assert meta["sender"] == "a@example.org" and meta["recipients"] == ["b@example.net"]
        assert meta["tls"]["server_name"] in ("other.test", "a.wild.test", "mx.test")
        assert meta["peer"].startswith("127.0.0.1:") and meta["rule"] is None


def test_tls_sni_option_errors(tmp_path: Path, cert_files: tuple[Path, Path, Path]) -> None:
    cert, key, _ = cert_files
    for args in (["--tls-sni", "x.test=" + str(cert) + ":" + str(key)],
                 ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-sni", "nonsense"],
                 ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-sni",
                  f"x.test={tmp_path}/missing.crt:{key}"]):
        result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                                 str(tmp_path / "m"), *args], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, args
        assert len(result.stderr.splitlines()) == 1 and "--tls-sni" in result.stderr
