"""Hostile clients against the real program on loopback: each attack bounded in time.

The server must keep serving, keep memory and descriptors bounded, and never store a
message it did not acknowledge or one a client smuggled.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Sinkhole

Factory = Callable[..., Sinkhole]
GREETING_TIMEOUT = 10


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GREETING_TIMEOUT,
                                    source_address=(source, 0))
    assert sock.recv(200).startswith(b"220")
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def converse(sock: socket.socket, data: bytes, replies: int) -> list[bytes]:
    """Send ``data`` and read ``replies`` final reply lines."""
    sock.sendall(data)
    reader = sock.makefile("rb")
    out = []
    while len(out) < replies:
        line = reader.readline()
        assert line, f"connection closed after {out}"
        if line[3:4] != b"-":
            out.append(line.rstrip(b"\r\n"))
    return out


def wait_for_a_free_slot(port: int, timeout: float = 10) -> None:
    """Poll until a new connection is greeted (220) rather than refused (421)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=GREETING_TIMEOUT) as sock:
            greeting = sock.recv(200)
        if greeting.startswith(b"220"):
            return
        assert greeting.startswith(b"421 4.7.0") and time.monotonic() < deadline, greeting
        time.sleep(0.02)


def normal_transaction(port: int) -> list[bytes]:
    with connect(port) as sock:
        return converse(sock, b"EHLO normal\r\nMAIL FROM:<a@example.org>\r\n"
                              b"RCPT TO:<b@example.net>\r\nDATA\r\n", 4) + converse(
            sock, b"normal message\r\n.\r\nQUIT\r\n", 2)


# --------------------------------------------------------------------------- slowloris


def test_slowloris_clients_time_out_while_normal_clients_are_served(
        sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--timeout", "2")
    stop = threading.Event()
    timed_out: list[bool] = []

    def trickle(source: str) -> None:
        with connect(sinkhole.port, source) as sock:
            sock.settimeout(0.5)
            received = b""
            for byte in b"EHLO slowloris-client-trickling-one-byte-at-a-time":
                if stop.is_set():
                    break
                sock.sendall(bytes([byte]))
                try:  # wait half a second, or less if the server speaks first
                    received = sock.recv(200)
                except TimeoutError:
                    continue
                break
            sock.settimeout(30)
            received += read_until_closed(sock)
            timed_out.append(received.startswith(b"421 4.4.2"))

    # From four addresses: one may hold 50 connections at most.
    trickers = [threading.Thread(target=trickle, args=(f"127.0.0.{2 + n % 4}",))
                for n in range(200)]
    for thread in trickers:
        thread.start()
    try:
        sinkhole.wait_for("connect", 200)
        # 200 trickling clients are connected; a normal client is still served.
        replies = normal_transaction(sinkhole.port)
        assert replies[4].startswith(b"250 2.0.0 queued as")
        assert replies[5].startswith(b"221")
    finally:
        for thread in trickers:
            thread.join(60)
    stop.set()
    assert len(timed_out) == 200 and all(timed_out)
    assert len(sinkhole.stored()) == 1


# --------------------------------------------------------------------------- floods


def test_connection_flood_past_the_limit(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--max-connections", "50")
    held = [connect(sinkhole.port) for _ in range(50)]
    refused = 0
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
            data = read_until_closed(sock)
            assert data.startswith(b"421 4.7.0")
            refused += 1
    assert refused == 100
    for sock in held:
        sock.close()
    sinkhole.wait_for("close", 50)  # the server has seen every held client go
    wait_for_a_free_slot(sinkhole.port)
    assert normal_transaction(sinkhole.port)[4].startswith(b"250")  # recovered
    assert sinkhole.process.poll() is None


def test_ten_thousand_sequential_connections_leak_nothing(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--discard")
    pid = sinkhole.process.pid

    def cycles(count: int) -> None:
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
                sock.recv(200)
                sock.sendall(b"QUIT\r\n")
                read_until_closed(sock)

    def run(total: int) -> None:
        workers = [threading.Thread(target=cycles, args=(total // 4,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)

    run(1000)  # warm up: imports, caches, allocator pools
    sinkhole.wait_for("close", 1000)
    fds, rss = open_fds(pid), rss_kb(pid)
    run(10000)
    sinkhole.wait_for("close", 11000, timeout=60)
    deadline = time.monotonic() + 10  # the last few sockets close just after their log line
    while open_fds(pid) > fds + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_fds(pid) <= fds + 2
    assert rss_kb(pid) < rss + 4096  # no growth worth the name: < 4 MiB for 10,000


# --------------------------------------------------------------------------- huge input


def test_gigabyte_line_and_gigabyte_message_keep_memory_bounded(
        sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--discard", "--max-message-size", str(10 * 2**20))
    pid = sinkhole.process.pid
    block = b"A" * 2**20
    with connect(sinkhole.port) as sock:
        assert converse(sock, b"EHLO big\r\n", 1)[0].startswith(b"250")
        for _ in range(1024):  # 1 GiB without a newline
            sock.sendall(block)
        assert converse(sock, b"\r\nNOOP\r\n", 2) == [b"500 5.5.2 Line too long",
                                                      b"250 2.0.0 OK"]
        assert converse(sock, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 3)[2][:3] \
            == b"354"
        line = b"B" * 998 + b"\r\n"
        chunk = line * 1024
        for _ in range(1024):  # ~1 GiB of well-formed message over the size limit
            sock.sendall(chunk)
        assert converse(sock, b".\r\n", 1)[0].startswith(b"552 5.3.4")
        assert converse(sock, b"NOOP\r\n", 1) == [b"250 2.0.0 OK"]
    assert rss_kb(pid, "VmHWM") < 100 * 1024
    assert sinkhole.events("message")[0]["outcome"] == "refused"


# --------------------------------------------------------------------------- smuggling

VECTORS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r.\r", b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("fake_end", VECTORS)
def test_smuggling_never_stores_a_second_message(sinkhole_factory: Factory,
                                                 fake_end: bytes) -> None:
    sinkhole = sinkhole_factory()
    smuggled = (b"Subject: outer\r\n\r\nhello" + fake_end +
                b"MAIL FROM:<spoof@bank.example>\r\nRCPT TO:<victim@example.net>\r\n"
                b"DATA\r\nSubject: smuggled\r\n\r\nforged\r\n.\r\n")
    with connect(sinkhole.port) as sock:
        converse(sock, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                       b"DATA\r\n", 4)
        replies = converse(sock, smuggled, 1)
        sock.sendall(b"QUIT\r\n")
        tail = read_until_closed(sock)
    # One reply for the one message; the rest was never commands.
    assert tail.startswith(b"221")
    stored = sinkhole.stored()
    assert len(stored) <= 1
    assert not any(b"Subject: smuggled" in m and b"outer" not in m for m in stored)
    if fake_end == b"\r\n\x00.\r\n":
        assert replies[0].startswith(b"250") and b"\x00.\r\nMAIL FROM" in stored[0]
    else:
        assert replies[0].startswith(b"550 5.6.0") and stored == []


def test_bdat_cannot_smuggle(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory()
    payload = b"hi\r\n.\r\nMAIL FROM:<spoof@x.y>\r\nRCPT TO:<v@x.y>\r\nDATA\r\nforged\r\n.\r\n"
    with connect(sinkhole.port) as sock:
        replies = converse(sock, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
                                 b"BDAT %d LAST\r\n" % len(payload) + payload + b"QUIT\r\n", 5)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"221"]
    [stored] = sinkhole.stored()
    assert stored.endswith(payload)


# --------------------------------------------------------------------------- garbage


def test_garbage_and_tls_hello_on_the_plain_port(sinkhole_factory: Factory,
                                                 client_tls: ssl.SSLContext) -> None:
    sinkhole = sinkhole_factory()
    with connect(sinkhole.port) as sock:
        sock.sendall(os.urandom(4096) + b"\r\n" * 30)
        data = read_until_closed(sock)
        assert data.rstrip().endswith(b"421 4.7.0 Too many errors, closing connection")
    raw = socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10)
    raw.recv(200)
    tls = client_tls.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    with pytest.raises((ssl.SSLError, OSError)):
        tls.do_handshake()  # the server answers SMTP, not TLS
    tls.close()
    assert normal_transaction(sinkhole.port)[4].startswith(b"250")


def test_clients_vanishing_mid_data_and_mid_bdat_leave_nothing(
        sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory()
    pid = sinkhole.process.pid
    normal_transaction(sinkhole.port)
    sinkhole.wait_for("close")
    baseline = open_fds(pid)
    for n in range(50):
        sock = connect(sinkhole.port)
        if n % 2:
            converse(sock, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 4)
            sock.sendall(b"Subject: half\r\n\r\npartial body\r\n")
        else:
            converse(sock, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n", 3)
            sock.sendall(b"BDAT 1000 LAST\r\nonly some of the chunk")
        sock.close()
    deadline = time.monotonic() + 10
    while open_fds(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(pid) <= baseline
    assert len(sinkhole.stored()) == 1  # only the normal one
    assert os.listdir(sinkhole.maildir / "tmp") == []
    abandoned = [e for e in sinkhole.events("message") if e["outcome"] == "abandoned"]
    assert len(abandoned) == 50
