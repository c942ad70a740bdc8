"""Sinkhole policy options: TLS fallback after failed handshakes, and the tarpit."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Sinkhole
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


@pytest.mark.parametrize("text", ["3", "0:1", "x:1", "3:0", "3:-1", ":"])
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


def broken_handshake(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO c\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass


def test_tls_fallback_through_the_program(sinkhole_factory: Factory,
                                          cert_files: tuple[Path, Path, Path]) -> None:
    cert, key, _ = cert_files
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key),
                                "--tls-fallback", "2:1")
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
