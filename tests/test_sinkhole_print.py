"""``trio-smtpd --print`` / ``--print-raw``: the mail catcher, its format and its wiring."""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import AS_ROOT
from trio_smtpd.sinkhole.printing import Envelope, readable, render

ENVELOPE = Envelope(number=3, session="1f.2", sender="alice@example.org",
                    recipients=["bob@example.org"], replies=["250 2.0.0 queued as X"],
                    size=1234, client="127.0.0.1:5000, HELO client.test, TLSv1.3")


def mime_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = "bob@example.org"
    message["Subject"] = "Café menu ☕"
    message.set_content("Grüße, Bob!\nSee the menu.\n")
    message.add_alternative("<p>Grüße, <b>Bob</b>!</p>\n", subtype="html")
    message.add_attachment(b"%PDF-1.4 " + bytes(range(256)) * 8, maintype="application",
                           subtype="pdf", filename="menu.pdf")
    return message.as_bytes().replace(b"\n", b"\r\n")


def test_readable_shows_envelope_decoded_headers_and_text_and_lists_attachments() -> None:
    out = readable(ENVELOPE, mime_message())
    lines = out.splitlines()
    assert lines[0].startswith("=== message 3 ===")
    assert "MAIL FROM: <alice@example.org>" in lines
    assert "RCPT TO:   <bob@example.org>" in lines
    assert "client:    127.0.0.1:5000, HELO client.test, TLSv1.3, session 1f.2" in lines
    assert "reply:     250 2.0.0 queued as X" in lines
    assert "Subject: Café menu ☕" in lines  # decoded from RFC 2047
    assert "Grüße, Bob!" in lines and "See the menu." in lines  # decoded from QP/base64
    assert "<p>Grüße, <b>Bob</b>!</p>" in lines
    assert any(line.startswith("--- attachment: menu.pdf (application/pdf, 2057 octets), "
                               "not shown") for line in lines)
    assert "JVBERi0" not in out  # the attachment's base64 is not dumped
    assert lines[-1].startswith("=== end of message 3 ===")


def test_readable_lmtp_has_one_reply_per_recipient() -> None:
    envelope = Envelope(1, "s", "", ["a@x.test", "b@x.test"], ["250 2.1.5 OK", "552 5.2.2 full"],
                        10)
    lines = readable(envelope, b"Subject: x\r\n\r\nbody\r\n").splitlines()
    assert "MAIL FROM: <>" in lines
    assert "reply:     <a@x.test> 250 2.1.5 OK" in lines
    assert "reply:     <b@x.test> 552 5.2.2 full" in lines
    assert "body" in lines  # a message without MIME headers is text/plain


def test_what_the_client_sent_cannot_act_on_the_terminal() -> None:
    data = (b"Subject: =?utf-8?q?clear=1B[2J?= \x1b]0;title\x07\r\n"
            b"X-Trick: safe\xe2\x80\xa8Subject: forged\r\n\r\n"
            b"red \x1b[31mtext\x1b[0m, \xe2\x80\xaeevil reversed\r\nbare\rcr\r\n")
    out = render(ENVELOPE, data, "readable").decode()
    for character in ("\x1b", "\x07", "\u2028", "\u202e", "\r"):
        assert character not in out
    assert "Subject: clear\\x1b[2J \\x1b]0;title\\x07" in out
    assert "X-Trick: safe\\u2028Subject: forged" in out
    assert "red \\x1b[31mtext\\x1b[0m, \\u202eevil reversed" in out
    assert "bare\\rcr" in out


@pytest.mark.parametrize(("charset", "encoding", "body", "shown"), [
    ("x-no-such-charset", "8bit", b"hello \xff world", "hello \ufffd world"),
    ("iso-8859-1", "quoted-printable", b"Gr=FC=DFe", "Grüße"),
    ("us-ascii", "8bit", "Grüße".encode(), "Grüße"),  # undeclared UTF-8, as often seen
])
def test_text_parts_are_decoded_by_their_charset_as_best_they_can_be(
        charset: str, encoding: str, body: bytes, shown: str) -> None:
    data = (f"Content-Type: text/plain; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n").encode() + body + b"\r\n"
    lines = readable(ENVELOPE, data).splitlines()
    assert any(line.startswith(f"--- text/plain; charset={charset} --") for line in lines)
    assert shown in lines


# Malformed or unusual messages the email package cannot render in full: a header its
# parser fails on, a charset whose codec cannot decode with replacement characters.
MALFORMED = [
    (b'From: "\r\n\r\nbody\r\n', ['From: "', "body"]),
    (b"Message-ID: <[>\r\n\r\nbody\r\n", ["Message-ID: <[>", "body"]),
    (b"Message-ID: <[>\r\n caf\xc3\xa9\r\n\r\nbody\r\n", ["Message-ID: <[> café", "body"]),
    (b"Content-Type: text/plain; charset=idna\r\n\r\nbody \xe9\r\n", ["body \ufffd"]),
    (b"Content-Type: text/plain; charset=punycode\r\n\r\nbody \xe9\r\n", ["body \ufffd"]),
    (b'Content-Type: text/plain; charset="utf\x008"\r\n\r\nbody\r\n', ["body"]),
    (b"Content-Disposition: inline; x*\r\n\r\nbody\r\n",
     ["Content-Disposition: inline; x*", "body"]),
    (b"Content-Type: text/plain; x*\r\n\r\nbody \xe9\r\n",  # the parser itself fails
     ["Content-Type: text/plain; x*", "body \ufffd"]),
]


@pytest.mark.parametrize(("data", "shown"), MALFORMED)
def test_what_the_email_package_cannot_render_is_shown_as_received(
        data: bytes, shown: list[str]) -> None:
    lines = readable(ENVELOPE, data).splitlines()
    for line in shown:
        assert line in lines
    assert lines[-1].startswith("=== end of message 3 ===")


def test_raw_is_the_bytes_as_received_between_two_banners() -> None:
    data = b"Subject: x\r\n\r\n\x00\xff\x1b binary \r\n"
    out = render(ENVELOPE, data, "raw")
    head, rest = out.split(b"\n", 1)
    assert head.startswith(b"--- message 3: MAIL FROM:<alice@example.org> "
                           b"RCPT TO:<bob@example.org> (1234 octets) ---")
    assert rest.startswith(data)
    assert rest[len(data):].startswith(b"--- end of message 3 ---")


# ------------------------------------------------------------------ the program


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    log = tmp_path / "log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "trio_smtpd", "--listen", "127.0.0.1:0", "--no-dns",
             "--log-format", "json", "--hostname", "mx.test", *AS_ROOT, *args],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "listening":
                return process, int(event["addresses"][0].rsplit(":", 1)[1])
        time.sleep(0.02)
    process.kill()
    process.communicate()
    raise AssertionError(f"trio-smtpd did not start: {log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> bytes:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return out


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("alice@example.org", ["bob@example.org"], data)
    # The message was printed before the session went on to QUIT, whose 221 has come.


def test_print_writes_readably_and_stores_nothing(tmp_path: Path) -> None:
    process, port = start(tmp_path, "--print")
    try:
        send(port, mime_message())
        send(port, b"Subject: second\r\n\r\nagain\r\n")
    finally:
        out = stop(process).decode()
    assert "Subject: Café menu ☕" in out and "Grüße, Bob!" in out
    assert "--- attachment: menu.pdf (application/pdf, 2057 octets), not shown" in out
    assert "=== message 2 " in out and "again" in out
    assert "reply:     250 2.0.0 discarded" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]  # no ./maildir


def test_print_raw_with_maildir_prints_and_stores(tmp_path: Path) -> None:
    process, port = start(tmp_path, "--print-raw", "--maildir", str(tmp_path / "mail"))
    data = b"Subject: raw\r\n\r\nexact \xc3\xa9 bytes\r\n"
    try:
        send(port, data)
    finally:
        out = stop(process)
    assert b"\n" + data + b"--- end of message 1 ---" in out
    [stored] = (tmp_path / "mail" / "new").iterdir()
    assert stored.read_bytes().endswith(data)


def test_print_with_discard_prints(tmp_path: Path) -> None:
    process, port = start(tmp_path, "--print", "--discard")
    try:
        send(port, b"Subject: discarded\r\n\r\nx\r\n")
    finally:
        out = stop(process).decode()
    assert "Subject: discarded" in out


@pytest.mark.parametrize(("args", "complaint"), [
    (["--print", "--workers", "2"], "need a single process"),
    (["--print", "--print-raw"], "not allowed with argument"),
])
def test_print_option_errors(args: list[str], complaint: str) -> None:
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert complaint in result.stderr


def test_a_closed_output_stops_the_printing_not_the_server(tmp_path: Path) -> None:
    process, port = start(tmp_path, "--print")
    try:
        assert process.stdout is not None
        process.stdout.close()  # trio-smtpd --print | head -0
        send(port, b"Subject: one\r\n\r\nx\r\n")
        send(port, b"Subject: two\r\n\r\nx\r\n")  # still served
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    events = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    printing = [e for e in events if e["event"] == "print"]
    assert len(printing) == 1 and "Broken pipe" in printing[0]["error"]
    assert [e["outcome"] for e in events if e["event"] == "message"] == ["accepted"] * 2


def test_malformed_messages_are_printed_and_the_session_goes_on(tmp_path: Path) -> None:
    process, port = start(tmp_path, "--print")
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for data, _ in MALFORMED:
                client.sendmail("alice@example.org", ["bob@example.org"], data)
            # The session survived its printing: the last message's QUIT is answered.
            assert client.quit()[0] == 221
    finally:
        out = stop(process).decode()
    assert f"=== end of message {len(MALFORMED)} " in out
    assert 'From: "' in out and "Message-ID: <[>" in out and "body \ufffd" in out
    assert "raised" not in (tmp_path / "log").read_text()
