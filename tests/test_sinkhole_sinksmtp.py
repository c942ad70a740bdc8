"""sinksmtp's features, each through the real ``trio-smtpd`` program: rule patterns that
cannot be dodged, --smtplog, rules without a phase, several rule files and include,
pattern files."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from tests import dnsserver as z
from tests.conftest import Sinkhole
from tests.dnsserver import Unbound
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


def test_rule_files_include_phaseless_rules_and_pattern_files(sinkhole_factory: Factory,
                                                              tmp_path: Path) -> None:
    write(tmp_path / "helos.txt", "# bad HELO names\n.dialup.example\nbad-*.example\n")
    write(tmp_path / "nets.txt", "127.0.0.9\n127.0.1.0/24\n")
    write(tmp_path / "common.toml", """
[[rule]]
name = "bad helo"
action = "reject"
reply = "550 5.7.1 bad helo"
[rule.match]
helo_file = "helos.txt"
""")
    first = write(tmp_path / "first.toml", """
include = "common.toml"

[[rule]]
name = "from fbi to joe"
action = "reject"
reply = "550 5.7.1 not from you to him"
[rule.match]
sender = ["info@fbi.example"]
recipient = ["joe@example.com"]
""")
    second = write(tmp_path / "second.toml", """
[[rule]]
name = "bad network"
action = "tempfail"
reply = "451 4.7.1 not from there"
[rule.match]
ip_file = "nets.txt"

[[rule]]
name = "overridden"
phase = "rcpt"
action = "accept"
[rule.match]
recipient = ["joe@example.com"]
""")
    sinkhole = sinkhole_factory("--rules", str(first), "--rules", str(second))
    with Wire(sinkhole.port, "127.0.0.9") as client:  # no phase: asked from connect on
        assert client.greeting.startswith(b"421 4.7.1 not from there")
    with Wire(sinkhole.port, "127.0.1.5") as client:
        assert client.greeting.startswith(b"421")
    with Wire(sinkhole.port) as client:
        assert code(client.command("EHLO host.dialup.example")) == 550
        assert code(client.command("EHLO dialup.example")) == 550
        assert code(client.command("EHLO bad-pc.example")) == 550
        assert code(client.command("EHLO fine.example")) == 250
        # Rules about the sender and a recipient wait for RCPT, and the rule from the
        # earlier file comes first.
        assert code(client.command("MAIL FROM:<info@fbi.example>")) == 250
        assert client.command("RCPT TO:<joe@example.com>").startswith(b"550 5.7.1 not from")
        assert code(client.command("RCPT TO:<ann@example.com>")) == 250


def test_host_pattern_file(sinkhole_factory: Factory, dns_server: Unbound,
                           tmp_path: Path) -> None:
    write(tmp_path / "hosts.txt", "# from the DNS zone of the tests\n.good.test\n")
    rules = write(tmp_path / "rules.toml", """
[[rule]]
name = "known hosts"
phase = "helo"
action = "reject"
reply = "550 5.7.1 known host"
[rule.match]
host_file = "hosts.txt"
""")
    sinkhole = sinkhole_factory("--rules", str(rules), "--dns-server", dns_server.address)
    with Wire(sinkhole.port, z.GOOD) as client:  # good.test, forward-confirmed
        assert client.command("EHLO x.test").startswith(b"550 5.7.1 known host")
    with Wire(sinkhole.port, z.NODNS) as client:
        assert code(client.command("EHLO x.test")) == 250
