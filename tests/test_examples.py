"""The runnable examples under examples/ work as their docstrings say."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

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


def start_app() -> tuple[subprocess.Popen[str], int, int]:
    process = subprocess.Popen([sys.executable, str(EXAMPLES / "app.py"), "0", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("listening on port "), first
    words = first.replace(",", "").split()
    return process, int(words[3]), int(words[-1])


def mid_message(port: int) -> tuple[socket.socket, BinaryIO]:
    """A client in the middle of sending a message's data, and its reader."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = client.makefile("rb")
    reader.readline()
    for line in (b"EHLO c", b"MAIL FROM:<a@b.c>", b"RCPT TO:<d@e.f>", b"DATA"):
        client.sendall(line + b"\r\n")
        while (reply := reader.readline())[3:4] == b"-":
            pass
    assert reply.startswith(b"354")
    client.sendall(b"Subject: half a message\r\n")
    return client, reader


def wait_refused(port: int) -> None:
    """Until the server has stopped accepting (its shutdown has begun)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError("the server kept accepting")


def test_app_example_serves_beside_another_service_and_stops_cleanly_on_ctrl_c() -> None:
    process, port, status_port = start_app()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nx\r\n")
        with socket.create_connection(("127.0.0.1", status_port), timeout=10) as status:
            assert status.makefile().readline().startswith("messages=1 ")
        busy, replies = mid_message(port)
        process.send_signal(signal.SIGINT)
        wait_refused(port)
        busy.sendall(b"\r\nthe rest\r\n.\r\n")  # the transaction in progress finishes
        assert replies.readline().startswith(b"250")
        busy.sendall(b"QUIT\r\n")
        assert replies.readline().startswith(b"221")
        busy.close()
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in err
    assert "message 2:" in out and out.rstrip().endswith("stopped")


def test_app_example_second_ctrl_c_cuts_clients_off_with_421() -> None:
    process, port, _ = start_app()
    try:
        busy, replies = mid_message(port)
        process.send_signal(signal.SIGINT)
        wait_refused(port)
        process.send_signal(signal.SIGINT)
        assert replies.readline().startswith(b"421")
        busy.close()
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in err
