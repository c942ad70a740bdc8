"""Sinkhole policy rules: every matcher, combinator, action and load error; then the real
program with rules, including a reload (SIGHUP) with a broken file."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AS_ROOT, Sinkhole
from tests.wire import Wire
from trio_smtpd.sinkhole.dnsfacts import RDNS, ReverseDNS
from trio_smtpd.sinkhole.rules import Facts, RulesError, load_rules

Factory = Callable[..., Sinkhole]


def rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def one(tmp_path: Path, phase: str, match: str, action: str = "reject") -> Callable[
        [Facts], str | None]:
    ruleset = load_rules(rules(tmp_path, f"""
[[rule]]
name = "r"
phase = "{phase}"
action = "{action}"
[rule.match]
{match}
"""))

    def decide(facts: Facts) -> str | None:
        verdict = ruleset.decide(phase, facts)  # type: ignore[arg-type]
        return None if verdict is None else verdict.action

    return decide


@pytest.mark.parametrize(("pattern", "address", "hit"), [
    ("<>", "", True), ("<>", "a@b.c", False),
    ("user@example.org", "user@example.org", True), ("user@example.org", "user@EXAMPLE.org", True),
    # sinksmtp lower-cases addresses and patterns alike before comparing them.
    ("user@example.org", "User@example.org", True), ("user@example.org", "user@x.org", False),
    ("user@", "user@anything.test", True), ("user@", "other@anything.test", False),
    ("@example.org", "x@example.org", True), ("@example.org", "x@sub.example.org", False),
    ("@.example.org", "x@sub.example.org", True), ("@.example.org", "x@a.b.example.org", True),
    # sinksmtp: "@.b.com matches the domain b.com and any subdomains of it".
    ("@.example.org", "x@example.org", True), ("@.example.org", "x@badexample.org", False),
    # "@ matches any address with a local part and a domain", not <>.
    ("@", "x@example.org", True), ("@", "", False),
    # Equivalent spellings of one address: quoted, quoted-pair, A-label or U-label.
    ("trap@", '"trap"@x.y', True), ("trap@", '"tr\\ap"@x.y', True),
    ("ceo@example.com", '"ceo"@example.com', True),
    ("ceo@example.com", '"ceo "@example.com', False),
    ("@xn--bcher-kva.example", "a@bücher.example", True),
    ("@bücher.example", "a@XN--BCHER-KVA.example", True),
    ("@.bücher.example", "a@mail.xn--bcher-kva.example.", True),
    ("postmaster@", "Postmaster", True), ("@", "Postmaster", False),
])
def test_sender_patterns(tmp_path: Path, pattern: str, address: str, hit: bool) -> None:
    decide = one(tmp_path, "mail", f"sender = [{pattern!r}]".replace("'", '"'))
    assert (decide(Facts(sender=address)) == "reject") is hit


def test_recipient_at_rcpt_and_any_recipient_later(tmp_path: Path) -> None:
    at_rcpt = one(tmp_path, "rcpt", 'recipient = ["trap@"]')
    assert at_rcpt(Facts(sender="", recipient="trap@x.test")) == "reject"
    assert at_rcpt(Facts(sender="", recipient="ok@x.test", recipients=("trap@x.test",))) is None
    at_data = one(tmp_path, "data", 'recipient = ["trap@"]')
    assert at_data(Facts(recipients=("ok@x.test", "trap@y.test"))) == "reject"
    assert at_data(Facts(recipients=("ok@x.test",))) is None


def test_ip_helo_tls_auth_matchers(tmp_path: Path) -> None:
    ip = one(tmp_path, "connect", 'ip = ["192.0.2.0/24", "2001:db8::/32"]')
    assert ip(Facts(ip="192.0.2.9")) == "reject"
    assert ip(Facts(ip="::ffff:192.0.2.9")) == "reject"
    assert ip(Facts(ip="2001:db8::1")) == "reject"
    assert ip(Facts(ip="198.51.100.1")) is None
    assert ip(Facts(ip=None)) is None
    helo = one(tmp_path, "helo", 'helo = ["*.dynamic.example", "localhost"]')
    assert helo(Facts(helo="host-1.DYNAMIC.example")) == "reject"
    assert helo(Facts(helo="localhost")) == "reject"
    assert helo(Facts(helo="mx.example")) is None
    tls = one(tmp_path, "mail", "tls = false\nauthenticated = false")
    assert tls(Facts(tls=False, authenticated=False)) == "reject"
    assert tls(Facts(tls=True, authenticated=False)) is None
    assert tls(Facts(tls=False, authenticated=True)) is None


def test_combinators_and_pattern_files(tmp_path: Path) -> None:
    (tmp_path / "senders.txt").write_text("# spammers\n@spam.example\n\nbad@\n")
    decide = one(tmp_path, "mail", '''sender_file = "senders.txt"
not = { ip = ["127.0.0.0/8"] }
any = [ { helo = ["a*"] }, { all = [ { tls = true }, { helo = ["b*"] } ] } ]''')
    base = Facts(ip="192.0.2.1", sender="x@spam.example", helo="alpha")
    assert decide(base) == "reject"
    assert decide(Facts(ip="127.0.0.1", sender="x@spam.example", helo="alpha")) is None
    assert decide(Facts(ip="192.0.2.1", sender="bad@anywhere.test", helo="beta",
                        tls=True)) == "reject"
    assert decide(Facts(ip="192.0.2.1", sender="bad@anywhere.test", helo="beta")) is None
    assert decide(Facts(ip="192.0.2.1", sender="good@ok.test", helo="alpha")) is None


def named(name: str) -> Facts:
    """A client known by ``name`` everywhere a host pattern looks: HELO, confirmed PTR."""
    return Facts(ip="198.51.100.1", helo=name, sender="a@c.example",
                 dns={RDNS: ReverseDNS(names=(name,), verified=(name,))})


@pytest.mark.parametrize(("key", "phase", "pattern", "hit"), [
    ("sender_file", "mail", "@spam.example", Facts(sender="x@spam.example")),
    ("recipient_file", "rcpt", "trap@", Facts(recipient="trap@x.example",
                                              recipients=("trap@x.example",))),
    ("ip_file", "connect", "192.0.2.0/24", Facts(ip="192.0.2.1")),
    ("helo_file", "helo", ".bad.example", named("x.bad.example")),
    ("host_file", "connect", ".bad.example", named("x.bad.example")),
    ("source_file", "mail", ".bad.example", named("x.bad.example")),
])
def test_indented_comments_in_every_pattern_file(tmp_path: Path, key: str, phase: str,
                                                 pattern: str, hit: Facts) -> None:
    # A line whose first non-blank character is "#" is a comment, indented or not: it
    # was read as a pattern (an address pattern without "@" or a bad network stopped
    # the program; a host pattern "#*" matched).
    (tmp_path / "patterns.txt").write_text(f"# top\n  # indented\n\t#*\n{pattern}\n")
    decide = one(tmp_path, phase, f'{key} = "patterns.txt"')
    assert decide(hit) == "reject"
    if key in ("helo_file", "host_file", "source_file"):
        assert decide(named("#x")) is None


def test_indented_comments_in_pattern_files_through_the_program(tmp_path: Path) -> None:
    (tmp_path / "traps.txt").write_text("trap@t.example\n    # traps added 2026-11\n")
    (tmp_path / "nets.txt").write_text("\t# test networks\n192.0.2.0/24\n")
    path = rules(tmp_path, """
[[rule]]
phase = "rcpt"
action = "reject"
[rule.match]
recipient_file = "traps.txt"
ip_file = "nets.txt"
""")
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--check", "--no-dns",
                             *AS_ROOT, "--maildir", str(tmp_path / "m"), "--rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_first_match_wins_actions_replies_and_delay(tmp_path: Path) -> None:
    ruleset = load_rules(rules(tmp_path, """
[[rule]]
phase = "rcpt"
action = "accept"
[rule.match]
recipient = ["postmaster@"]

[[rule]]
name = "slow"
phase = "rcpt"
action = "tempfail"
delay = 2.5
reply = "450 4.2.0 Mailbox busy"

[[rule]]
phase = "rcpt"
action = "reject"
"""))
    first = ruleset.decide("rcpt", Facts(recipient="postmaster@x.test"))
    assert first is not None and first.action == "accept" and first.rule == "rule 1"
    second = ruleset.decide("rcpt", Facts(recipient="user@x.test"))
    assert second is not None and (second.action, second.delay, second.rule) == (
        "tempfail", 2.5, "slow")
    assert second.reply is not None and str(second.reply) == "450 4.2.0 Mailbox busy"
    assert ruleset.decide("mail", Facts(sender="a@b.c")) is None  # no rule: accept
    defaults = load_rules(rules(tmp_path, """
[[rule]]
phase = "message"
action = "save-then-reject"
[[rule]]
phase = "mail"
action = "tempfail"
"""))
    saved = defaults.decide("message", Facts())
    assert saved is not None and saved.reply is not None and saved.reply.code == 554
    later = defaults.decide("mail", Facts())
    assert later is not None and later.reply is not None and later.reply.code == 451


def test_no_rules_must_be_said(tmp_path: Path) -> None:
    assert len(load_rules(rules(tmp_path, "rule = []\n"))) == 0


@pytest.mark.parametrize(("text", "message"), [
    ("[[rule]\n", "rules.toml"),
    ("[[rule]]\nphase = \"nope\"\naction = \"reject\"", "phase must be one of"),
    ("[[rule]]\nphase = \"mail\"\naction = \"bounce\"", "action must be one of"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\ncolour = 1", "unknown keys"),
    ("[[rule]]\nphase = \"mail\"\naction = \"save-then-reject\"", "save-then-reject needs"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\nreply = \"hello\"", "reply must look"),
    ("[[rule]]\nphase = \"mail\"\naction = \"tempfail\"\nreply = \"550 no\"", "does not suit"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\ndelay = -1", "delay must be"),
    ("[[rule]]\nphase = \"connect\"\naction = \"reject\"\n[rule.match]\nhelo = [\"x\"]",
     "not known yet in the connect phase"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\n[rule.match]\nrecipient = [\"a@\"]",
     "not known yet in the mail phase"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\n[rule.match]\nip = [\"300.1.1.1\"]",
     "bad IP address"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\n[rule.match]\nsender = [\"nobody\"]",
     "needs an '@'"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\n[rule.match]\nsender_file = \"no\"",
     "cannot read sender_file"),
    ("[[rule]]\nname = \"x\"\nphase = \"mail\"\naction = \"reject\"\n[rule.match]\nfoo = 1",
     "rule 1 (x): unknown matcher 'foo'"),
    ("[[rule]]\nphase = \"mail\"\naction = \"reject\"\n[rule.match]\nany = []",
     "non-empty list"),
    ("other = 1", "unknown top-level keys"),
    ("", "no rules; write 'rule = []'"),
    ("# nothing but a comment\n", "no rules"),
])
def test_load_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RulesError) as error:
        load_rules(rules(tmp_path, text))
    assert message in str(error.value) and str(tmp_path) in str(error.value)


# --------------------------------------------------------------------------- the program

POLICY = """
[[rule]]
name = "no-localhost"
phase = "connect"
action = "reject"
reply = "554 5.7.1 Not from there"
[rule.match]
ip = ["127.0.0.3/32"]

[[rule]]
name = "bad-helo"
phase = "helo"
action = "reject"
[rule.match]
helo = ["*.bad.example"]

[[rule]]
name = "greylist"
phase = "mail"
action = "tempfail"
[rule.match]
sender = ["@later.example"]

[[rule]]
name = "traps"
phase = "rcpt"
action = "reject"
reply = "550 5.1.1 No such user"
[rule.match]
recipient = ["trap@"]

[[rule]]
name = "samples"
phase = "message"
action = "save-then-reject"
[rule.match]
sender = ["@spam.example"]
"""


def greeting(source: str, port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as sock:
        line = sock.makefile("rb").readline()
        sock.sendall(b"QUIT\r\n")
        return line


def test_rules_through_the_program(sinkhole_factory: Factory, tmp_path: Path) -> None:
    path = rules(tmp_path, POLICY)
    sinkhole = sinkhole_factory("--rules", str(path))
    assert greeting("127.0.0.3", sinkhole.port).startswith(b"554 5.7.1 Not from there")
    assert greeting("127.0.0.1", sinkhole.port).startswith(b"220 ")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        assert client.ehlo("host.bad.example")[0] == 550
        assert client.ehlo("mx.good.example")[0] == 250
        assert client.mail("x@later.example")[0] == 451
        assert client.mail("x@ok.example")[0] == 250
        assert client.rcpt("trap@example.net") == (550, b"5.1.1 No such user")
        assert client.rcpt("user@example.net")[0] == 250
        assert client.data(b"Subject: fine\r\n\r\nkept\r\n")[0] == 250
        client.mail("x@spam.example")
        client.rcpt("user@example.net")
        code, text = client.data(b"Subject: sample\r\n\r\nspam\r\n")
        assert code == 554 and b"saved as" in text
    assert len(sinkhole.stored()) == 2  # the accepted one and the saved sample
    messages = sinkhole.events("message")
    assert [m["outcome"] for m in messages] == ["accepted", "saved-then-rejected"]
    assert messages[1]["rule"] == "samples"
    assert sinkhole.record(str(messages[1]["file"]))["rule"] == "samples"
    policies = {e["rule"] for e in sinkhole.events("policy")}
    assert policies == {"no-localhost", "bad-helo", "greylist", "traps", "samples"}


def test_message_rule_refusals_log_policy_and_refused_lines_naming_the_rule(
        sinkhole_factory: Factory, tmp_path: Path) -> None:
    # "Every refusal by a rule logs a policy line and a refused line naming the rule":
    # a message-phase refusal (save-then-reject above all, answered by the store) had
    # neither, only its message line named the rule.
    path = rules(tmp_path, """
[[rule]]
name = "samples"
phase = "message"
action = "save-then-reject"
[rule.match]
sender = ["@spam.example"]

[[rule]]
name = "no-junk"
phase = "message"
action = "reject"
[rule.match]
sender = ["@junk.example"]
""")
    sinkhole = sinkhole_factory("--rules", str(path))
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.ehlo("client.test")
        for sender in ("x@spam.example", "x@junk.example", "x@fine.example"):
            client.mail(sender)
            client.rcpt("user@example.net")
            client.data(b"Subject: sample\r\n\r\nkeep me\r\n")
    sinkhole.wait_for("message", 3)
    sinkhole.wait_for("close")
    assert len(sinkhole.stored()) == 2  # the sample is still saved, as the rule says
    refused = [(e["command"], e["code"], e.get("rule")) for e in sinkhole.events("refused")]
    assert refused == [("DATA", 554, "samples"), ("DATA", 550, "no-junk")]
    policies = [(e["phase"], e["rule"], e["action"]) for e in sinkhole.events("policy")]
    assert policies == [("message", "samples", "save-then-reject"),
                        ("message", "no-junk", "reject")]
    assert [(m["outcome"], m.get("rule")) for m in sinkhole.events("message")] == [
        ("saved-then-rejected", "samples"), ("rejected", "no-junk"), ("accepted", None)]


def test_save_then_reject_by_option_names_no_rule(sinkhole_factory: Factory) -> None:
    # --save-then-reject refuses every message, not a rule: no rule to name.
    sinkhole = sinkhole_factory("--save-then-reject")
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("x@spam.example")
        client.rcpt("user@example.net")
        assert client.data(b"Subject: sample\r\n\r\nkeep me\r\n")[0] == 554
    sinkhole.wait_for("close")
    [refused] = sinkhole.events("refused")
    assert refused["code"] == 554 and "rule" not in refused
    assert sinkhole.events("policy") == []


def test_broken_rules_file_at_start_exits_2(tmp_path: Path) -> None:
    path = rules(tmp_path, "[[rule]]\nphase = \"later\"\naction = \"reject\"\n")
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                             str(tmp_path / "m"), "--rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "phase must be one of" in result.stderr and len(result.stderr.splitlines()) == 1


def test_sighup_reload_keeps_old_rules_when_the_new_file_is_broken(
        sinkhole_factory: Factory, tmp_path: Path) -> None:
    path = rules(tmp_path, POLICY)
    sinkhole = sinkhole_factory("--rules", str(path))

    def mail_reply(sender: str) -> int:
        with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
            client.ehlo("c")
            return int(client.mail(sender)[0])

    def reloaded(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(sinkhole.events("rules-reload")) < count:
            assert time.monotonic() < deadline
            time.sleep(0.02)

    assert mail_reply("x@later.example") == 451
    path.write_text("[[rule]\nbroken")
    sinkhole.process.send_signal(signal.SIGHUP)
    reloaded(1)
    assert "previous rules kept" in str(sinkhole.events("rules-reload")[0]["outcome"])
    assert mail_reply("x@later.example") == 451  # the old rules still apply
    # A file truncated to nothing is a mistake, not a policy (issue 17).
    path.write_text("")
    sinkhole.process.send_signal(signal.SIGHUP)
    reloaded(2)
    assert "previous rules kept" in str(sinkhole.events("rules-reload")[1]["outcome"])
    assert "no rules" in str(sinkhole.events("rules-reload")[1]["error"])
    assert mail_reply("x@later.example") == 451
    path.write_text("rule = []  # no rules at all: everything accepted\n")
    sinkhole.process.send_signal(signal.SIGHUP)
    reloaded(3)
    assert sinkhole.events("rules-reload")[2]["outcome"] == "loaded"
    assert mail_reply("x@later.example") == 250


def test_sighup_reaches_every_worker(sinkhole_factory: Factory, tmp_path: Path) -> None:
    path = rules(tmp_path, POLICY)
    sinkhole = sinkhole_factory("--rules", str(path), "--workers", "2")
    sinkhole.wait_for("listening", 3)
    path.write_text("rule = []\n")
    sinkhole.process.send_signal(signal.SIGHUP)
    sinkhole.wait_for("rules-reload", 2)  # one line from each worker
    assert sinkhole.process.poll() is None  # the supervisor is still there
    assert {e["outcome"] for e in sinkhole.events("rules-reload")} == {"loaded"}
    # The supervisor's SIGTERM, forwarded, stops the workers and then itself, cleanly.
    assert sinkhole.stop() == 0


MORE_POLICY = """
[[rule]]
name = "need-tls-for-vip"
phase = "rcpt"
action = "reject"
reply = "530 5.7.0 Use STARTTLS for the VIP"
[rule.match]
tls = false
recipient = ["vip@"]

[[rule]]
name = "known-spammers"
phase = "mail"
action = "reject"
[rule.match]
sender_file = "spammers.txt"
not = { authenticated = true }

[[rule]]
name = "postmaster-always"
phase = "data"
action = "accept"
reply = "354 Go ahead, postmaster"
[rule.match]
recipient = ["postmaster@"]

[[rule]]
name = "odd-helo-data"
phase = "data"
action = "tempfail"
[rule.match]
any = [ { helo = ["weird*"] }, { all = [ { tls = false }, { sender = ["<>"] } ] } ]

[[rule]]
name = "slow-down"
phase = "helo"
action = "accept"
delay = 0.3
[rule.match]
helo = ["slow.*"]
"""


def test_more_matchers_and_actions_through_the_program(
        sinkhole_factory: Factory, tmp_path: Path, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    (tmp_path / "spammers.txt").write_text("@spam.example\n")
    path = rules(tmp_path, MORE_POLICY)
    cert, key, _ = cert_files
    sinkhole = sinkhole_factory("--rules", str(path), "--tls-cert", str(cert),
                                "--tls-key", str(key))
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        client.ehlo("plain.example")
        assert client.mail("x@spam.example")[0] == 550  # sender_file, not authenticated
        assert client.mail("x@ok.example")[0] == 250
        assert client.rcpt("vip@example.net") == (530, b"5.7.0 Use STARTTLS for the VIP")
        assert client.rcpt("postmaster@example.net")[0] == 250
        assert client.docmd("DATA") == (354, b"Go ahead, postmaster")  # accept + reply
        client.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert client.getreply()[0] == 250
        client.mail("")  # the null sender without TLS: the any/all combinator matches
        client.rcpt("user@example.net")
        assert client.docmd("DATA")[0] == 451
        client.rset()
        client.starttls(context=client_tls)
        client.ehlo("plain.example")
        client.mail("x@ok.example")
        assert client.rcpt("vip@example.net")[0] == 250  # tls = false no longer holds
    with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=10) as client:
        assert client.ehlo("weird.example")[0] == 250
        client.mail("x@ok.example")
        client.rcpt("user@example.net")
        assert client.docmd("DATA")[0] == 451  # helo glob inside any
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"HELO slow.example\r\n")
        reader.readline()
        start = time.monotonic()
        sock.sendall(b"NOOP\r\n")
        assert reader.readline().startswith(b"250")
        # The rule's tarpit applies to the replies after it matched (a behaviour).
        assert time.monotonic() - start >= 0.3
    rules_seen = {e["rule"] for e in sinkhole.events("policy")}
    assert rules_seen == {"known-spammers", "need-tls-for-vip", "odd-helo-data"}


def test_connect_refusal_then_only_quit(sinkhole_factory: Factory, tmp_path: Path) -> None:
    sinkhole = sinkhole_factory("--rules", str(rules(tmp_path, POLICY)))
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10,
                                  source_address=("127.0.0.3", 0)) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"554 5.7.1 Not from there\r\n"
        sock.sendall(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n")
        # RFC 5321 3.1: after a 554 greeting every command but QUIT gets 503.
        assert [reader.readline()[:3] for _ in range(3)] == [b"503", b"503", b"221"]


def test_rule_files_include_each_other_but_not_themselves(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    rules(tmp_path, 'include = ["sub/a.toml"]\n[[rule]]\nname = "own"\nphase = "mail"\n'
                    'action = "reject"\n')
    (tmp_path / "sub" / "a.toml").write_text('[[rule]]\nname = "included"\nphase = "mail"\n'
                                             'action = "tempfail"\n')
    verdict = load_rules(tmp_path / "rules.toml").decide("mail", Facts(sender=""))
    assert verdict is not None and verdict.rule == "included"  # where the include stands
    (tmp_path / "sub" / "a.toml").write_text('include = "../rules.toml"\n')
    with pytest.raises(RulesError, match="included by itself"):
        load_rules(tmp_path / "rules.toml")
    (tmp_path / "sub" / "a.toml").write_text('include = "missing.toml"\n')
    with pytest.raises(RulesError, match=r"missing\.toml"):
        load_rules(tmp_path / "rules.toml")


def test_a_rule_without_phase_is_asked_from_its_first_phase_on(tmp_path: Path) -> None:
    ruleset = load_rules(rules(tmp_path, '[[rule]]\naction = "reject"\n[rule.match]\n'
                                         'sender = ["a@b.example"]\ntls = false\n'))
    facts = Facts(sender="a@b.example", recipient="c@d.example")
    # tls counts from MAIL on (clients say EHLO before STARTTLS), as in sinksmtp.
    assert [ruleset.decide(phase, facts) is not None for phase in
            ("connect", "helo", "mail", "rcpt", "data", "message")] == [
        False, False, True, True, True, True]


def test_the_rules_examples_of_the_docs_load(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "docs" / "sinkhole.md").read_text()
    examples = [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]
    assert len(examples) >= 2
    for example in examples:
        assert len(load_rules(rules(tmp_path, example))) >= 1


def test_a_refused_line_names_only_the_rule_that_refused_and_the_reply_it_gave(
        sinkhole_factory: Factory, tmp_path: Path) -> None:
    # Found by review (2026-12-02): an empty command line after a rule's refusal was
    # logged as that rule's refusal too (the engine did not tell its observer of the
    # line); and a connect rule's policy line gave the rule's reply (550, 450), not the
    # one sent (554, 421: RFC 5321 3.1).
    path = rules(tmp_path, """
[[rule]]
name = "trap"
phase = "rcpt"
action = "reject"
[rule.match]
recipient = ["trap@example.net"]

[[rule]]
name = "go-away"
phase = "connect"
action = "reject"
reply = "550 5.7.1 go away"
[rule.match]
ip = ["127.0.0.2"]
""")
    sinkhole = sinkhole_factory("--rules", str(path))
    with Wire(sinkhole.port) as client:
        assert client.command("EHLO client.test").startswith(b"250")
        assert client.command("MAIL FROM:<a@example.org>").startswith(b"250")
        assert client.command("RCPT TO:<trap@example.net>").startswith(b"550")
        assert client.command("").startswith(b"500")
    with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=10,
                                  source_address=("127.0.0.2", 0)) as refused_at_connect:
        assert refused_at_connect.makefile("rb").readline().startswith(b"554 5.7.1 go away")
    sinkhole.wait_for("close", 2)
    refused = [(e["command"], e["code"], e.get("rule")) for e in sinkhole.events("refused")]
    assert ("RCPT", 550, "trap") in refused, refused
    assert [rule for _, code, rule in refused if code == 500] == [None], refused
    replies = {e["rule"]: e["reply"] for e in sinkhole.events("policy")}
    assert replies["go-away"] == "554 5.7.1 go away", replies
