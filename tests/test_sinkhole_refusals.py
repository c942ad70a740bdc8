"""Every refusal is one log line with the client's address, whoever made it; AUTH and TLS
failures are structured events; fail2ban's filter matches the failed AUTHs. All through
the real program."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AS_ROOT, Sinkhole, require_program
from tests.wire import Wire
from trio_smtpd import Summary
from trio_smtpd.sinkhole.watch import SessionWatch

Factory = Callable[..., Sinkhole]

CONTRIB = Path(__file__).parent.parent / "contrib" / "fail2ban"
BODY = b"Subject: hi\r\n\r\nbody\r\n"


def refused(sinkhole: Sinkhole) -> list[tuple[object, ...]]:
    return [(e["command"], e["code"], e["enhanced"], e["ip"]) for e in
            sinkhole.events("refused")]


def test_every_engine_refusal_is_one_line(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--max-message-size", "1000", "--max-recipients", "2")
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("MAIL FROM:<a@b.example> SIZE=2000000").startswith(b"552")
        assert client.command("MAIL FROM:a@b.example").startswith(b"501")  # no brackets
        assert client.command("RCPT TO:<c@d.example>").startswith(b"503")  # no MAIL yet
        assert client.command("MAIL FROM:<a@b.example>").startswith(b"250")
        for recipient in ("c@d.example", "e@d.example"):
            assert client.command(f"RCPT TO:<{recipient}>").startswith(b"250")
        assert client.command("RCPT TO:<f@d.example>").startswith(b"452")
        assert client.command("DATA").startswith(b"354")
        client.send(b"Subject: smuggled\r\n\r\na\n.\nMAIL FROM:<x@y.example>\r\n.\r\n")
        assert client.reply().startswith(b"550 5.6.0")
        assert client.command("MAIL FROM:<a@b.example>").startswith(b"250")
        assert client.command("RCPT TO:<c@d.example>").startswith(b"250")
        assert client.command("DATA").startswith(b"354")
        client.send((b"x" * 498 + b"\r\n") * 4 + b".\r\n")  # 2000 octets, limit 1000
        assert client.reply().startswith(b"552 5.3.4")
        assert client.command("MAIL FROM:<a@b.example>").startswith(b"250")
        assert client.command("RCPT TO:<c@d.example>").startswith(b"250")
        client.send(b"BDAT 2500 LAST\r\n" + b"y" * 2500)
        assert client.reply().startswith(b"552 5.3.4")
    sinkhole.wait_for("close")
    assert refused(sinkhole) == [
        ("MAIL", 552, "5.3.4", "127.0.0.1"), ("MAIL", 501, "5.1.7", "127.0.0.1"),
        ("RCPT", 503, "5.5.1", "127.0.0.1"), ("RCPT", 452, "4.5.3", "127.0.0.1"),
        ("DATA", 550, "5.6.0", "127.0.0.1"), ("DATA", 552, "5.3.4", "127.0.0.1"),
        ("BDAT", 552, "5.3.4", "127.0.0.1")]
    events = sinkhole.events("refused")
    assert all(e["session"] == events[0]["session"] and str(e["peer"]).startswith(
        "127.0.0.1:") and e["reason"] for e in events)
    # A message refused for its size is logged with the size the client sent (over the
    # limit), not what was handed on before the refusal.
    too_big = [e for e in sinkhole.events("message") if str(e["reply"]).startswith("552")]
    assert [e["size"] for e in too_big] == [events[5]["size"]]
    assert events[5]["size"] == 2000  # every octet sent (the end-of-data line aside)
    assert events[6]["size"] == 2500


@pytest.mark.parametrize(("option", "limit", "text"), [
    ("--max-connections", "max_connections", "Too many connections, try again later"),
    ("--max-connections-per-ip", "max_connections_per_ip",
     "Too many connections from your address"),
    ("--max-connection-rate", "max_connection_rate",
     "Too many new connections from your address, slow down"),
])
def test_a_connection_over_a_limit_is_one_line(sinkhole_factory: Factory, option: str,
                                               limit: str, text: str) -> None:
    sinkhole = sinkhole_factory(option, "1/minute" if "rate" in option else "1")
    with Wire(sinkhole.port), socket.create_connection(("127.0.0.1", sinkhole.port),
                                                       timeout=10) as second:
        assert second.recv(100) == f"421 4.7.0 {text}\r\n".encode()
    sinkhole.wait_for("refused")
    [event] = sinkhole.events("refused")
    assert (event["command"], event["code"], event["enhanced"], event["ip"]) == (
        "CONNECT", 421, "4.7.0", "127.0.0.1")
    # What the client was told, and which limit told it.
    assert (event["reason"], event["limit"]) == (text, limit)
    assert event["session"] is None and str(event["peer"]).startswith("127.0.0.1:")
    assert not sinkhole.events("log")


def failed_logins(port: int, client_tls: ssl.SSLContext, attempts: int) -> None:
    with Wire(port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        client.starttls(client_tls)
        assert client.command("EHLO client.test").startswith(b"250")
        for _ in range(attempts):
            assert client.command("AUTH LOGIN").startswith(b"334")
            assert client.command("YWxpY2U=").startswith(b"334")  # alice
            assert client.command("d3Jvbmc=").startswith(b"535")  # wrong


def test_auth_and_tls_failures_are_structured(sinkhole_factory: Factory,
                                              tls_and_auth: list[str],
                                              client_tls: ssl.SSLContext) -> None:
    sinkhole = sinkhole_factory(*tls_and_auth, tls_listen=1)
    failed_logins(sinkhole.port, client_tls, 1)
    with Wire(sinkhole.port) as client:  # a malformed exchange
        assert client.command("EHLO client.test").startswith(b"250")
        client.starttls(client_tls)
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("AUTH PLAIN Z2FyYmFnZQ==").startswith(b"501 ")  # "garbage"
    with Wire(sinkhole.port) as client:  # a STARTTLS whose handshake fails
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("STARTTLS").startswith(b"220")
        client.send(b"EHLO not a ClientHello\r\n")
        assert client.sock.recv(100) == b""
    with socket.create_connection(("127.0.0.1", sinkhole.ports[1]), timeout=10) as sock:
        sock.sendall(b"EHLO plaintext on the TLS port\r\n")  # implicit TLS
        assert sock.recv(100) == b""
    sinkhole.wait_for("close", 3)
    sinkhole.wait_for("tls-failed", 2)
    auth, malformed = sinkhole.events("refused")
    assert (auth["command"], auth["code"], auth["ip"]) == ("AUTH", 535, "127.0.0.1")
    assert (auth["mechanism"], auth["user"]) == ("LOGIN", "alice") and "detail" not in auth
    # A malformed exchange names no user, and says what was wrong with it.
    assert (malformed["code"], malformed["mechanism"], malformed["user"]) == (501, "PLAIN",
                                                                             None)
    assert malformed["detail"] == "PLAIN needs authzid NUL authcid NUL passwd"
    starttls, implicit = sinkhole.events("tls-failed")
    for event, during in ((starttls, "starttls"), (implicit, "connect")):
        assert (event["ip"], event["during"]) == ("127.0.0.1", during)
        assert str(event["peer"]).startswith("127.0.0.1:") and event["reason"]
    # The library's kind of failure, and OpenSSL's word for it: no ClientHello came.
    for event in (starttls, implicit):
        assert (event["reason"], event["detail"], event["after_hello"]) == (
            "protocol error", "WRONG_VERSION_NUMBER", False)
    assert starttls["session"] != implicit["session"] and implicit["session"]
    # The library's free-text lines about them are replaced, not repeated; and each
    # AUTH failure is that one refused line, not another without the address (issue 16).
    free_text = [e["message"] for e in sinkhole.events("log")]
    assert not [m for m in free_text if "AUTH" in str(m) or "TLS" in str(m)], free_text
    assert [e["event"] for e in sinkhole.log() if e.get("user") == "alice"] == ["refused"]


def test_plaintext_injected_behind_starttls_is_logged(sinkhole_factory: Factory,
                                                     tls_and_auth: list[str],
                                                     client_tls: ssl.SSLContext) -> None:
    sinkhole = sinkhole_factory(*tls_and_auth)
    injected = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\n"
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        client.send(b"STARTTLS\r\n" + injected)  # one write: CVE-2011-0411's attack
        assert client.reply().startswith(b"220")
        client.handshake(client_tls)
        # The injected commands were dropped: after TLS the session starts over.
        assert client.command("RCPT TO:<victim@example.net>").startswith(b"503")
    sinkhole.wait_for("close")
    [event] = sinkhole.events("starttls-injection")
    assert event["octets"] == len(injected) and event["ip"] == "127.0.0.1"
    assert event["session"] == sinkhole.events("close")[0]["session"]


def test_a_client_line_that_looks_like_an_engine_summary_is_only_a_bad_command(
        sinkhole_factory: Factory) -> None:
    # Found by review (2026-12-02): the session's watch took any line in brackets for the
    # engine's own summaries. "[message data: x]" crashed the session (a traceback, no
    # reply, the connection held until its timeout); "[4096 octets after STARTTLS
    # discarded]" forged a starttls-injection line from a client that never sent STARTTLS.
    sinkhole = sinkhole_factory()
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("[message data: x]").startswith(b"500")
        assert client.command("[4096 octets after STARTTLS discarded]").startswith(b"500")
        assert client.command("[message data: 12 octets]").startswith(b"500")
        assert client.command("NOOP").startswith(b"250")
        assert client.command("QUIT").startswith(b"221")
    sinkhole.wait_for("close")
    assert sinkhole.events("starttls-injection") == []
    assert [e["code"] for e in sinkhole.events("refused")] == [500, 500, 500]
    assert not [e for e in sinkhole.events("log") if e.get("level") == "error"]


def test_refusals_in_the_text_log(tmp_path: Path) -> None:
    log_path = tmp_path / "text.log"
    argv = [sys.executable, "-m", "trio_smtpd", "--log-format", "text", "--no-dns",
            "--maildir", str(tmp_path / "maildir"), "--listen", "127.0.0.1:0",
            "--hostname", "mx.test", *AS_ROOT]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(argv, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while " listening " not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        port = int(log_path.read_text().split("addresses=127.0.0.1:", 1)[1].split()[0])
        with Wire(port) as client:
            assert client.command("EHLO a\u2028b").startswith(b"250")
            assert client.command("MAIL FROM:<a@b.example> SIZE=99999999999").startswith(
                b"552")
        while " close " not in log_path.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(30)
    text = log_path.read_text()
    [line] = [ln for ln in text.splitlines() if " refused " in ln]
    assert " ip=127.0.0.1 command=MAIL code=552 enhanced=5.3.4 reason=\"Message size " in line
    assert "\u2028" not in text and ' helo="a\\u2028b" ' in text


@pytest.mark.interop
def test_fail2ban_filter_matches_the_failed_logins(sinkhole_factory: Factory,
                                                   tls_and_auth: list[str],
                                                   client_tls: ssl.SSLContext,
                                                   tmp_path: Path) -> None:
    fail2ban_regex = require_program("fail2ban-regex")
    sinkhole = sinkhole_factory(*tls_and_auth)
    failed_logins(sinkhole.port, client_tls, 2)
    failed_logins(sinkhole.port, client_tls, 1)
    with Wire(sinkhole.port) as client:  # other refusals, and a success, do not count
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("AUTH PLAIN AGFsaWNlAHMzY3JldA==").startswith(b"538")
        client.starttls(client_tls)
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("AUTH PLAIN AGFsaWNlAHMzY3JldA==").startswith(b"235")
        assert client.command("RCPT TO:<x@y.example>").startswith(b"503")
    sinkhole.wait_for("close", 3)
    log = tmp_path / "copy.log"  # as the program wrote it, the listening line and all
    log.write_bytes(sinkhole.log_path.read_bytes())
    result = subprocess.run([fail2ban_regex, "-o", "ip", str(log),
                             str(CONTRIB / "filter.d" / "trio-smtpd.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["127.0.0.1"] * 3, result.stdout
    # The jail names that filter.
    jail = (CONTRIB / "jail.d" / "trio-smtpd.conf").read_text()
    assert "\nfilter   = trio-smtpd\n" in jail and "\nenabled  = true\n" in jail
    assert json.loads(log.read_text().splitlines()[0])["event"] == "listening"


def test_the_watch_counts_bdat_chunks_until_a_new_transaction() -> None:
    """The size a refused BDAT message is logged with: every chunk the client announced
    (whatever the case of the verb), forgotten at the next transaction; other verbs,
    however they start, announce nothing."""
    watch = SessionWatch("s.1", ("192.0.2.1", 2525))
    for line in ("EHLO client.test", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>",
                 "bdat 100", "NOOP", "BDAT 50 LAST"):
        watch.received(line)
    assert watch.message_size == 150
    watch.received("rset")
    assert watch.message_size is None
    for line in ("BDATX 10", "BDA 10", Summary("[message data: 7 octets]")):
        watch.received(line)
    assert watch.message_size == 7  # (DATA's count, from the engine's summary)
    watch.received("BDAT 20")
    assert watch.message_size == 20
