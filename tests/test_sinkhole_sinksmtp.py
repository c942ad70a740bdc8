"""sinksmtp's features, each through the real ``trio-smtpd`` program: rule patterns that
cannot be dodged, --smtplog."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Sinkhole
from tests.wire import Wire

Factory = Callable[..., Sinkhole]

BODY = b"Subject: sinksmtp\r\n\r\nthe body\r\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def code(reply: bytes) -> int:
    return int(reply[:3])


def test_address_patterns_cannot_be_dodged(sinkhole_factory: Factory, tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", """
[[rule]]
name = "traps"
phase = "rcpt"
action = "reject"
reply = "550 5.1.1 trapped"
[rule.match]
recipient = ["trap@", "ceo@example.com", "@xn--bcher-kva.example", "@.spamtrap.example"]

[[rule]]
name = "spammer"
phase = "mail"
action = "reject"
[rule.match]
sender = ["spammer@evil.example"]
""")
    sinkhole = sinkhole_factory("--rules", str(rules))
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        for sender in ('"spammer"@evil.example', "SPAMMER@Evil.Example",
                       '"sp\\ammer"@evil.example'):
            assert code(client.command(f"MAIL FROM:<{sender}> SMTPUTF8")) == 550, sender
        assert code(client.command("MAIL FROM:<a@good.example> SMTPUTF8")) == 250
        for recipient in ('"trap"@x.y', '"tr\\ap"@x.y', "TRAP@x.y", '"ceo"@example.com',
                          "CEO@EXAMPLE.COM", "a@bücher.example", "a@BÜCHER.EXAMPLE",
                          "a@spamtrap.example", "a@deep.sub.spamtrap.example"):
            assert code(client.command(f"RCPT TO:<{recipient}>")) == 550, recipient
        assert code(client.command("RCPT TO:<ceo2@example.com>")) == 250


def test_smtplog_is_a_transcript_without_auth_secrets(sinkhole_factory: Factory,
                                                      tls_and_auth: list[str],
                                                      client_tls: ssl.SSLContext,
                                                      tmp_path: Path) -> None:
    transcript = tmp_path / "smtp.log"
    sinkhole = sinkhole_factory(*tls_and_auth, "--smtplog", str(transcript))
    secret = "AGFsaWNlAHMzY3JldA=="  # base64 of \0alice\0s3cret
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        client.starttls(client_tls)
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command(f"AUTH PLAIN {secret}").startswith(b"235")
        assert client.message("alice@example.org", ["b@example.net"], BODY).startswith(b"250")
    sinkhole.wait_for("close")
    text = transcript.read_text()
    session = sinkhole.events("close")[0]["session"]
    assert f" {session} > 220 mx.test ESMTP" in text
    assert f" {session} < AUTH PLAIN [redacted]\n" in text
    assert f" {session} < [message data: {len(BODY)} octets]\n" in text
    assert secret not in text and "s3cret" not in text
