"""sinksmtp's features, each through the real ``trio-smtpd`` program: rule patterns that
cannot be dodged, --smtplog, do-nothing clients, rules without a phase, several rule
files and include, pattern files, note, savedir, --save-hash, MAIL FROM:<> refused at
RCPT, and a greeting per local address (--conncfg)."""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import trustme

from tests import dnsserver as z
from tests.conftest import Sinkhole
from tests.dnsserver import Unbound
from tests.test_sinkhole import headers_and_body
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


def test_do_nothing_clients_are_refused_at_connect(sinkhole_factory: Factory,
                                                   tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", """
[[rule]]
name = "known yakker"
phase = "helo"
action = "accept"
make_yakker = true
[rule.match]
helo = ["ylmf-pc"]
""")
    sinkhole = sinkhole_factory("--dncount", "2", "--dndur", "1h", "--minphase", "from",
                                "--rules", str(rules))

    sessions = 0

    def visit(source: str, *commands: str) -> bytes:
        """One session; returns its greeting once the server has finished with it."""
        nonlocal sessions
        with Wire(sinkhole.port, source) as client:
            for command in commands:
                assert code(client.command(command)) == 250
        sessions += 1
        sinkhole.wait_for("close", sessions)
        return client.greeting

    # Two sessions that get nowhere (EHLO is not enough with --minphase from).
    assert visit("127.0.0.2", "EHLO idle.test").startswith(b"220")
    assert visit("127.0.0.2").startswith(b"220")
    assert visit("127.0.0.2").startswith(b"421 4.7.0")  # now refused at connect
    # Reaching MAIL clears an address's count; other addresses are not affected.
    assert visit("127.0.0.3", "EHLO busy.test").startswith(b"220")
    assert visit("127.0.0.3", "EHLO busy.test", "MAIL FROM:<a@b.example>").startswith(b"220")
    assert visit("127.0.0.3").startswith(b"220")
    assert visit("127.0.0.3").startswith(b"220")  # one since MAIL: not yet (now two)
    # make_yakker: one session is enough, whatever it did.
    assert visit("127.0.0.4", "EHLO ylmf-pc", "MAIL FROM:<a@b.example>").startswith(b"220")
    assert visit("127.0.0.4").startswith(b"421 4.7.0")
    yakkers = sinkhole.events("yakker")
    assert [(e["ip"], e["outcome"]) for e in yakkers] == [
        ("127.0.0.2", "added"), ("127.0.0.3", "added"), ("127.0.0.4", "made one by a rule")]
    refusals = [e for e in sinkhole.events("refused") if e["command"] == "CONNECT"]
    assert [(e["ip"], e["code"]) for e in refusals] == [("127.0.0.2", 421), ("127.0.0.4", 421)]


def test_a_do_nothing_client_is_forgotten_after_dndur(sinkhole_factory: Factory) -> None:
    sinkhole = sinkhole_factory("--dncount", "1", "--dndur", "2s")
    with Wire(sinkhole.port, "127.0.0.2") as client:  # no HELO: got nowhere
        assert client.greeting.startswith(b"220")
    sinkhole.wait_for("yakker")
    with Wire(sinkhole.port, "127.0.0.2") as client:
        assert client.greeting.startswith(b"421 4.7.0")  # remembered
    # Refused sessions do not count, so --dndur after the one that did it is forgotten.
    deadline = time.monotonic() + 30
    while True:
        with Wire(sinkhole.port, "127.0.0.2") as client:
            if client.greeting.startswith(b"220"):
                break
            assert client.greeting.startswith(b"421 4.7.0")
        assert time.monotonic() < deadline, "still refused long after --dndur"
        time.sleep(0.1)
    refusals = [e for e in sinkhole.events("refused") if e["command"] == "CONNECT"]
    assert refusals and all(e["ip"] == "127.0.0.2" for e in refusals)


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


def test_note_and_savedir(sinkhole_factory: Factory, tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", """
[[rule]]
name = "vip"
phase = "mail"
action = "accept"
note = "mail from the boss"
savedir = "boss-mail"
[rule.match]
sender = ["@boss.example"]
""")
    sinkhole = sinkhole_factory("--rules", str(rules), "--discard")
    with Wire(sinkhole.port) as client:
        assert client.message("big@boss.example", ["me@example.net"], BODY,
                              ehlo="c.test").startswith(b"250")
        assert client.message("other@example.org", ["me@example.net"], BODY).startswith(
            b"250")  # the savedir stays for the session, as in sinksmtp
    with Wire(sinkhole.port) as client:
        assert client.message("other@example.org", ["me@example.net"], BODY,
                              ehlo="c.test").startswith(b"250 2.0.0 discarded")
    sinkhole.wait_for("close", 2)
    saved = sorted((tmp_path / "boss-mail" / "new").iterdir())
    assert len(saved) == 2 and not (sinkhole.maildir / "new").exists()
    [note] = sinkhole.events("note")
    assert (note["rule"], note["note"], note["phase"]) == ("vip", "mail from the boss", "mail")
    assert str(note["peer"]).startswith("127.0.0.1:")


def test_save_hash_names_files_and_never_stores_twice(sinkhole_factory: Factory,
                                                      tmp_path: Path) -> None:
    results = {}
    for kind in ("msg", "full", "all"):
        sinkhole = sinkhole_factory("--save-hash", kind, "--maildir", str(tmp_path / kind))
        sinkhole.maildir = tmp_path / kind
        replies = []
        for recipient in ("a@example.net", "a@example.net", "b@example.net"):
            with Wire(sinkhole.port) as client:
                replies.append(client.message("s@example.org", [recipient], BODY,
                                              ehlo="c.test"))
        assert all(r.startswith(b"250 2.0.0 queued as ") for r in replies)
        names = [r.split()[-1].decode() for r in replies]
        files = sorted(os.listdir(sinkhole.maildir / "new"))
        assert sorted(set(names)) == files
        results[kind] = names
        for name in files:
            stored = (sinkhole.maildir / "new" / name).read_bytes()
            received = headers_and_body(stored)[0][-1]
            assert f"\n\tid {name}\n" in received  # the header names the file it is in
            meta = sinkhole.record(name)
            assert meta["file"] == name
            assert meta["body_sha256"] == hashlib.sha256(b"the body\r\n").hexdigest()
        sinkhole.stop()
    message_hash = hashlib.sha256(BODY).hexdigest()
    assert results["msg"] == [message_hash] * 3  # one message, stored once
    assert results["full"][0] == results["full"][1] != results["full"][2]
    assert len(set(results["all"])) == 3
    # A copy a reader moved to cur/ is not stored again either.
    new, cur = tmp_path / "msg" / "new", tmp_path / "msg" / "cur"
    (new / message_hash).rename(cur / f"{message_hash}:2,S")
    again = sinkhole_factory("--save-hash", "msg", "--maildir", str(tmp_path / "msg"))
    with Wire(again.port) as client:
        assert client.message("s@example.org", ["a@example.net"], BODY, ehlo="c.test"
                              ).startswith(b"250 2.0.0 queued as " + message_hash.encode())
    assert os.listdir(new) == [] and os.listdir(tmp_path / "msg" / "tmp") == []


def test_save_hash_with_verified_messages(sinkhole_factory: Factory, dns_server: Unbound,
                                          tmp_path: Path) -> None:
    """Verified messages get their trace headers only at the end, once the results are
    known: by then the name is known too, and the Received header still names it."""
    sinkhole = sinkhole_factory("--save-hash", "msg", "--dns-server", dns_server.address)
    with Wire(sinkhole.port) as client:
        replies = [client.message("s@good.test", ["a@example.net"], BODY, ehlo="c.test")
                   for _ in range(2)]
    name = hashlib.sha256(BODY).hexdigest()
    assert replies == [f"250 2.0.0 queued as {name}\r\n".encode()] * 2
    assert os.listdir(sinkhole.maildir / "new") == [name]
    headers, body = headers_and_body((sinkhole.maildir / "new" / name).read_bytes())
    assert body == BODY
    assert [h.split(":")[0] for h in headers] == ["Return-Path", "X-Original-To",
                                                  "Authentication-Results", "Received"]
    assert headers[2].startswith("Authentication-Results: mx.test;")
    assert f"\n\tid {name}\n" in headers[3]
    meta = sinkhole.record(name)
    assert meta["authentication_results"]["spf"]["domain"] == "good.test"
    assert meta["body_sha256"] == hashlib.sha256(b"the body\r\n").hexdigest()


def test_null_sender_refusal_moves_to_rcpt(sinkhole_factory: Factory, tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", """
[[rule]]
name = "no bounces"
phase = "mail"
action = "reject"
reply = "550 5.7.1 no bounces here"
[rule.match]
sender = ["<>"]
""")
    sinkhole = sinkhole_factory("--rules", str(rules))
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO c.test").startswith(b"250")
        assert code(client.command("MAIL FROM:<>")) == 250  # never refused here
        for recipient in ("a@example.net", "b@example.net"):
            assert client.command(f"RCPT TO:<{recipient}>").startswith(b"550 5.7.1 no bounces")
        assert code(client.command("RSET")) == 250
        assert code(client.command("MAIL FROM:<a@example.org>")) == 250
        assert code(client.command("RCPT TO:<a@example.net>")) == 250
    sinkhole.wait_for("close")
    [deferred] = [e for e in sinkhole.events("policy") if e.get("deferred")]
    assert (deferred["rule"], deferred["phase"], deferred["deferred"]) == (
        "no bounces", "mail", "rcpt")
    assert [(e["command"], e["rule"]) for e in sinkhole.events("refused")] == [
        ("RCPT", "no bounces"), ("RCPT", "no bounces")]


def test_greeting_and_certificate_per_local_address(
        sinkhole_factory: Factory, cert_files: tuple[Path, Path, Path], ca: trustme.CA,
        client_tls: ssl.SSLContext, tmp_path: Path) -> None:
    cert, key, _ = cert_files  # localhost, 127.0.0.1, mx.test
    leaf = ca.issue_cert("second.test")
    cert2, key2 = tmp_path / "second.crt", tmp_path / "second.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert2))
    leaf.private_key_pem.write_to_path(str(key2))
    conncfg = write(tmp_path / "conncfg", f"""
# LOCAL          settings
127.0.0.2        hostname=second.test cert={cert2} key={key2}
127.0.0.0/8:1    hostname=never.test
127.0.0.3        hostname=third.test
""")
    sinkhole = sinkhole_factory("--tls-cert", str(cert), "--tls-key", str(key), "--conncfg",
                                str(conncfg), "--listen", "127.0.0.2:0", "--listen",
                                "127.0.0.3:0")
    default, second, third = sinkhole.ports

    def greeting_and_ehlo(address: str, port: int) -> tuple[bytes, bytes]:
        with Wire(port, host=address) as client:  # to that address of ours
            return client.greeting, client.command("EHLO c.test")

    def served_names(address: str, port: int) -> set[str]:
        """The names of the certificate STARTTLS gets from that address of ours."""
        client_tls.check_hostname = False  # (the chain is still verified)
        with Wire(port, host=address) as client:
            assert client.command("EHLO c.test").startswith(b"250")
            client.starttls(client_tls)
            assert isinstance(client.sock, ssl.SSLSocket)
            certificate = client.sock.getpeercert()
        assert certificate is not None
        return {str(pair[1]) for pair in certificate["subjectAltName"]}

    assert served_names("127.0.0.1", default) == {"localhost", "127.0.0.1", "mx.test"}
    assert served_names("127.0.0.2", second) == {"second.test"}
    greeting, ehlo = greeting_and_ehlo("127.0.0.1", default)  # no line: the command line
    assert greeting.startswith(b"220 mx.test ESMTP") and b"STARTTLS" in ehlo
    greeting, ehlo = greeting_and_ehlo("127.0.0.2", second)
    assert greeting.startswith(b"220 second.test ESMTP") and b"STARTTLS" in ehlo
    assert ehlo.startswith(b"250-second.test greets c.test")
    greeting, ehlo = greeting_and_ehlo("127.0.0.3", third)  # no certificate: no STARTTLS
    assert greeting.startswith(b"220 third.test ESMTP") and b"STARTTLS" not in ehlo
    with Wire(second, host="127.0.0.2") as client:
        assert client.message("a@example.org", ["b@example.net"], BODY,
                              ehlo="c.test").startswith(b"250")
    assert "\n\tby second.test (trio_smtpd)\n" in headers_and_body(sinkhole.stored()[0])[0][-1]
    # SIGHUP reads it again; a bad file keeps the previous settings.
    write(conncfg, "127.0.0.3 hostname=renamed.test\n")
    sinkhole.process.send_signal(signal.SIGHUP)
    sinkhole.wait_for("conncfg-reload")
    assert greeting_and_ehlo("127.0.0.3", third)[0].startswith(b"220 renamed.test ESMTP")
    write(conncfg, "not-an-address hostname=x\n")
    sinkhole.process.send_signal(signal.SIGHUP)
    sinkhole.wait_for("conncfg-reload", 2)
    assert "failed" in str(sinkhole.events("conncfg-reload")[1]["outcome"])
    assert greeting_and_ehlo("127.0.0.3", third)[0].startswith(b"220 renamed.test ESMTP")
