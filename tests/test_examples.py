"""The runnable examples under examples/ work as their docstrings say."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def start(name: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, str(EXAMPLES / name), "0", *args],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("listening on port "), first
    return process, int(first.split()[-1])


def test_transactions_example() -> None:
    process, port = start("transactions.py", "2")
    try:
        client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        client.sendmail("a@example.org", ["you@example.org"], b"Subject: hi\r\n\r\nx\r\n")
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("a@example.org", ["spam@example.org"], b"x\r\n")
        client.close()  # after its second message the example shuts down by itself
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "from <a@example.org> to you@example.org:" in out
    assert "to spam@example.org" in out


def test_decisions_example() -> None:
    process, port = start("decisions.py")
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.ehlo("localhost")[0] == 550
            assert client.ehlo("client.test")[0] == 250
            assert client.mail("x@later.test")[0] == 451
            assert client.mail("x@example.org")[0] == 250
            assert client.rcpt("mallory@example.org")[0] == 550
            assert client.rcpt("alice@example.org")[0] == 250
            assert client.data(b"Subject: hi\r\n\r\nhello\r\n")[0] == 250
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert "octets for ['alice@example.org']" in out
