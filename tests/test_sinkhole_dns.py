"""DNS policy end to end: the real ``trio-smtpd --rules ... --dns-server`` against a real
DNS server (unbound on loopback, tests/dnsserver.py), real client connections.

Clients come from several loopback addresses (Linux routes all of 127.0.0.0/8 to this
machine), each with its own DNS story in the test zone, and from IPv6 addresses claimed
through the PROXY-protocol listener. Each matcher decides a session once (a hit) and
lets one through (a miss)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import dnsserver as z
from tests.conftest import Sinkhole, require_program
from tests.dnsserver import SilentServer, Unbound, start_unbound
from tests.test_sinkhole import headers_and_body

Factory = Callable[..., Sinkhole]
MATCHED = "matched by rule"


@dataclass(frozen=True)
class Client:
    commands: tuple[str, ...] = ()
    source: str = "127.0.0.1"  # an IPv6 address here goes through the PROXY listener


def read_reply(reader: object) -> str:
    while True:
        line = reader.readline().decode().rstrip("\r\n")  # type: ignore[attr-defined]
        if line[3:4] != "-":
            return line


def converse(sinkhole: Sinkhole, client: Client) -> list[str]:
    """The replies to the greeting and to each command, then QUIT."""
    proxied = ":" in client.source
    port = sinkhole.ports[-1] if proxied else sinkhole.port
    source = "127.0.0.1" if proxied else client.source
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=(source, 0)) as sock:
        reader = sock.makefile("rb")
        if proxied:
            sock.sendall(f"PROXY TCP6 {client.source} 2001:db8::1 40000 25\r\n".encode())
        replies = [read_reply(reader)]
        for command in client.commands:
            sock.sendall(command.encode() + b"\r\n")
            replies.append(read_reply(reader))
        if not replies[-1].startswith("421"):  # (after 421 the server has hung up)
            sock.sendall(b"QUIT\r\n")
            read_reply(reader)
    return replies


def dns_sinkhole(factory: Factory, tmp_path: Path, server: str, rules: str,
                 *args: str) -> Sinkhole:
    path = tmp_path / "rules.toml"
    path.write_text(rules)
    return factory("--rules", str(path), "--dns-server", server, "--proxy-listen",
                   "127.0.0.1:0", "--proxy-trusted", "127.0.0.1", *args)


def one_rule(phase: str, match: str, extra: str = "") -> str:
    return (f'[[rule]]\nname = "r"\nphase = "{phase}"\naction = "reject"\n'
            f'reply = "550 5.7.1 {MATCHED}"\n{extra}\n[rule.match]\n{match}\n')


def at(source: str) -> Client:
    return Client(source=source)


def ehlo(name: str, verb: str = "EHLO") -> Client:
    return Client((f"{verb} {name}",), "127.0.0.2")  # remote 127.0.0.2, local 127.0.0.1


def mail(sender: str, helo: str = "client.test", source: str = "127.0.0.1") -> Client:
    return Client((f"EHLO {helo}", f"MAIL FROM:<{sender}>"), source)


def rcpt(recipient: str) -> Client:
    return Client(("EHLO client.test", "MAIL FROM:<a@good.test>", f"RCPT TO:<{recipient}>"))


# (phase, match, clients the rule refuses, clients it lets through)
CASES = {
    # sinksmtp "dns": the FCrDNS classes of the client address.
    "dns-good": ("connect", 'dns = ["good"]', [at(z.GOOD), at(z.DYNAMIC)],
                 [at(z.EXISTS), at(z.NODNS)]),
    "dns-exists": ("connect", 'dns = ["exists"]', [at(z.EXISTS), at(z.GOOD)],
                   [at(z.NOFORWARD), at(z.NODNS)]),
    "dns-noforward": ("connect", 'dns = ["noforward"]', [at(z.NOFORWARD), at(z.EXISTS)],
                      [at(z.GOOD), at(z.INCONSISTENT)]),
    "dns-inconsistent": ("connect", 'dns = ["inconsistent"]', [at(z.INCONSISTENT)],
                         [at(z.GOOD), at(z.NOFORWARD)]),
    "dns-nodns": ("connect", 'dns = ["nodns"]',
                  [at(z.NODNS), at(z.NOFORWARD), at(z.INCONSISTENT)], [at(z.GOOD)]),
    "dns-unknown": ("connect", 'dns = ["unknown"]', [at(z.PTR_REFUSED)], [at(z.NODNS)]),
    # sinksmtp "host": a forward-confirmed name.
    "host": ("connect", 'host = ["*.dyn.test"]', [at(z.DYNAMIC)],
             [at(z.GOOD), at(z.INCONSISTENT)]),
    # sinksmtp "dnsbl", and IPv6 in nibbles (which sinksmtp lacks).
    "dnsbl": ("connect", 'dnsbl = ["zen.test"]', [at(z.LISTED), at(z.LISTED_V6)],
              [at(z.GOOD), at("2001:db8::8")]),
    # sinksmtp "dbl host|helo|from".
    "dbl-host": ("connect", 'dbl = { host = ["dbl.test"] }', [at(z.DYNAMIC)], [at(z.GOOD)]),
    "dbl-helo": ("helo", 'dbl = { helo = ["dbl.test"] }', [ehlo("spammy.test")],
                 [ehlo("good.test")]),
    "dbl-sender": ("mail", 'dbl = { sender = ["dbl.test"] }', [mail("a@spammy.test")],
                   [mail("a@good.test")]),
    "dbl-any": ("mail", 'dbl = { any = ["dbl.test"] }',
                [mail("a@good.test", source=z.DYNAMIC), mail("a@good.test", helo="spammy.test"),
                 mail("a@spammy.test")], [mail("a@good.test")]),
    # sinksmtp "helo-has".
    "helo_has-helo": ("helo", 'helo_has = ["helo"]', [ehlo("mail.test", "HELO")],
                      [ehlo("mail.test")]),
    "helo_has-ehlo": ("helo", 'helo_has = ["ehlo"]', [ehlo("mail.test")],
                      [ehlo("mail.test", "HELO")]),
    "helo_has-nodots": ("helo", 'helo_has = ["nodots"]', [ehlo("fred")], [ehlo("mail.test")]),
    "helo_has-bareip": ("helo", 'helo_has = ["bareip"]', [ehlo("192.0.2.1")],
                        [ehlo("[192.0.2.1]")]),
    "helo_has-properip": ("helo", 'helo_has = ["properip"]',
                          [ehlo("[192.0.2.1]"), ehlo("[IPv6:2001:db8::1]")],
                          [ehlo("192.0.2.1")]),
    "helo_has-myip": ("helo", 'helo_has = ["myip"]', [ehlo("[127.0.0.1]")],
                      [ehlo("[127.0.0.2]")]),
    "helo_has-remip": ("helo", 'helo_has = ["remip"]', [ehlo("[127.0.0.2]"), ehlo("127.0.0.2")],
                       [ehlo("[127.0.0.1]")]),
    "helo_has-otherip": ("helo", 'helo_has = ["otherip"]', [ehlo("[192.0.2.1]")],
                         [ehlo("[127.0.0.2]")]),
    "helo_has-bogus": ("helo", 'helo_has = ["bogus"]', [ehlo("my_pc"), ehlo(".")],
                       [ehlo("mail.test")]),
    # sinksmtp "from-has" / "to-has" resolves, baddom, unknown.
    "sender_has-resolves": ("mail", 'sender_has = ["resolves"]',
                            [mail("a@good.test"), mail("a@amx.test")],
                            [mail("a@nullmx.test"), mail("")]),
    "sender_has-baddom": ("mail", 'sender_has = ["baddom"]',
                          [mail(f"a@{d}.test") for d in ("nullmx", "lhmx", "private",
                                                        "nosuch", "v6only")],
                          [mail("a@good.test")]),
    "sender_has-unknown": ("mail", 'sender_has = ["unknown"]', [mail("a@refused.test")],
                           [mail("a@good.test")]),
    "recipient_has-resolves": ("rcpt", 'recipient_has = ["resolves"]', [rcpt("b@good.test")],
                               [rcpt("b@lhmx.test")]),
    "recipient_has-baddom": ("rcpt", 'recipient_has = ["baddom"]',
                             [rcpt("b@nullmx.test"), rcpt("b@lhmx.test")],
                             [rcpt("b@good.test")]),
    "recipient_has-unknown": ("rcpt", 'recipient_has = ["unknown"]',
                              [rcpt("b@refused.test")], [rcpt("b@nosuch.test")]),
    # sinksmtp "source": confirmed host name, HELO name or sender domain.
    "source": ("mail", 'source = [".spammy.test", "*.dyn.test"]',
               [mail("a@spammy.test"), mail("a@good.test", helo="mx.spammy.test"),
                mail("a@good.test", source=z.DYNAMIC)],
               [mail("a@good.test")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_matcher_decides_a_real_session(case: str, sinkhole_factory: Factory,
                                             dns_server: Unbound, tmp_path: Path) -> None:
    phase, match, hits, misses = CASES[case]
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address,
                            one_rule(phase, match))
    for client in hits:
        last = converse(sinkhole, client)[-1]
        assert MATCHED in last and last[0] == "5", (client, last)
    for client in misses:
        last = converse(sinkhole, client)[-1]
        assert last[0] == "2", (client, last)


def test_an_mx_saying_no_mail_makes_a_domain_baddom_whatever_the_others(
        sinkhole_factory: Factory, dns_server: Unbound, tmp_path: Path) -> None:
    # As sinksmtp's ValidDomain has it: any MX of "." or "localhost." means "send us no
    # mail", even beside a good mail host; RFC 7505 forbids a null MX beside other MX
    # records, so a domain publishing both is broken, not deliverable.
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address,
                            one_rule("mail", 'sender_has = ["baddom"]'))
    for domain in ("mixedmx.test", "mixednull.test"):
        last = converse(sinkhole, mail(f"a@{domain}"))[-1]
        assert MATCHED in last and last[0] == "5", (domain, last)
    assert converse(sinkhole, mail("a@good.test"))[-1].startswith("250")  # its MX alone


def test_a_second_dns_server_answers_when_the_first_never_does(
        sinkhole_factory: Factory, silent_dns: SilentServer, dns_server: Unbound,
        tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(one_rule("connect", 'dnsbl = ["zen.test"]'))
    sinkhole = sinkhole_factory("--rules", str(rules), "--dns-server", silent_dns.address,
                                "--dns-server", dns_server.address, "--dns-timeout", "20")
    greeting = converse(sinkhole, at(z.LISTED))[0]
    assert MATCHED in greeting and greeting[0] == "5", greeting
    assert converse(sinkhole, at(z.GOOD))[0].startswith("220 ")
    sinkhole.wait_for("close", 2)
    assert silent_dns.received >= 1  # each lookup went to the silent one first
    assert [e["fcrdns"] for e in sinkhole.events("connect")] == ["nodns", "good"]


def test_helo_has_none_never_reaches_the_rules(sinkhole_factory: Factory,
                                               dns_server: Unbound, tmp_path: Path) -> None:
    # As in sinksmtp, whose docs say so: a HELO without a name is answered by the
    # protocol engine (501) before any rule is asked, so "none" loads but never holds.
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address,
                            one_rule("helo", 'helo_has = ["none"]'))
    assert converse(sinkhole, Client(("EHLO",)))[-1].startswith("501 ")
    assert converse(sinkhole, Client(("EHLO a",)))[-1].startswith("250")
    assert not sinkhole.events("policy")


def test_unknown_tempfails_by_default_and_rules_can_say_otherwise(
        sinkhole_factory: Factory, dns_server: Unbound, tmp_path: Path) -> None:
    rules = (one_rule("connect", 'dnsbl = ["refused.test"]')
             + one_rule("mail", 'sender_has = ["baddom"]', 'unknown = "nomatch"'))
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address, rules)
    greeting = converse(sinkhole, at(z.GOOD))[0]
    assert greeting == "421 4.4.3 Temporary DNS failure; try again later"
    [policy] = [e for e in sinkhole.events("policy") if "rule" in e]
    assert policy["dns"] == "unknown" and policy["action"] == "tempfail"
    nomatch = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address,
                           one_rule("mail", 'sender_has = ["baddom"]', 'unknown = "nomatch"'))
    assert converse(nomatch, mail("a@refused.test"))[-1].startswith("250")


def test_facts_reach_logs_trace_headers_and_the_record(
        sinkhole_factory: Factory, dns_server: Unbound, tmp_path: Path) -> None:
    # A rule that names the lists but lets everyone through: the facts are looked up
    # because a rule may use them, and reported whatever the rules decide.
    rules = ('[[rule]]\nname = "flag"\nphase = "message"\naction = "accept"\n'
             'reply = "250 2.0.0 flagged"\n[rule.match]\n'
             'any = [{ dnsbl = ["zen.test"] }, { dbl = { sender = ["dbl.test"] } }]\n')
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address, rules)
    for source, sender in ((z.LISTED, "a@spammy.test"), (z.GOOD, "a@good.test")):
        replies = converse(sinkhole, Client(
            ("EHLO client.test", f"MAIL FROM:<{sender}>", "RCPT TO:<b@good.test>", "DATA",
             "Subject: hi\r\n\r\nbody\r\n."), source))
        assert replies[-1].startswith("250 2.0.0 "), replies
    sinkhole.wait_for("close", 2)
    listed, good = sinkhole.events("connect")
    assert (listed["rdns"], listed["fcrdns"]) == (None, "nodns")
    assert listed["listed"] == [f"zen.test {z.LISTED} 127.0.0.2: {z.ZEN_REASON}"]
    assert (good["rdns"], good["fcrdns"], good["listed"]) == (["good.test"], "good", None)
    hits = [e for e in sinkhole.events("policy") if "list" in e]
    assert {(e["list"], e["subject"], e["reason"]) for e in hits} == {
        ("zen.test", z.LISTED, z.ZEN_REASON),
        ("dbl.test", "spammy.test", z.DBL_REASONS["spammy.test"])}
    stored = {}
    for path in sorted((sinkhole.maildir / "new").iterdir()):
        meta = sinkhole.record(path.name)
        stored[meta["sender"]] = (headers_and_body(path.read_bytes())[0], meta)
    received, meta = stored["a@spammy.test"]
    assert received[-1].startswith(f"Received: from client.test (unknown [{z.LISTED}])")
    assert meta["rule"] == "flag" and meta["dns"]["fcrdns"] == "nodns"
    assert {(x["list"], x["reason"]) for x in meta["dns"]["listings"]} == {
        ("zen.test", z.ZEN_REASON), ("dbl.test", z.DBL_REASONS["spammy.test"])}
    received, meta = stored["a@good.test"]
    assert received[-1].startswith("Received: from client.test (good.test [127.0.0.1])")
    assert meta["dns"] == {"rdns": ["good.test"], "fcrdns": "good",
                           "confirmed": "good.test", "listings": []}


def test_each_fact_is_looked_up_once_and_cached_by_ttl(
        sinkhole_factory: Factory, dns_server: Unbound, tmp_path: Path) -> None:
    rules = (one_rule("connect", 'dnsbl = ["zen.test"]')
             + one_rule("helo", 'dbl = { helo = ["dbl.test"] }')
             + one_rule("mail", 'sender_has = ["baddom"]')
             + one_rule("rcpt", 'recipient_has = ["baddom"]'))
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, dns_server.address, rules)
    mark = dns_server.mark()
    message = ("MAIL FROM:<a@amx.test>", "RCPT TO:<b@good.test>", "RCPT TO:<c@good.test>",
               "DATA", "Subject: hi\r\n\r\nbody\r\n.")
    session = Client(("EHLO client.test", *message, "RSET", *message, "EHLO client.test",
                      *message))
    assert all(r[0] in "23" for r in converse(sinkhole, session))
    sinkhole.wait_for("close")
    first = dns_server.queries(mark)
    # Every fact once, however often the session asks (three messages, two HELOs),
    # the sender's SPF policy included (messages are verified by default):
    assert sorted(first) == sorted([
        ("1.0.0.127.in-addr.arpa", "PTR"), ("good.test", "A"), ("good.test", "AAAA"),
        ("1.0.0.127.zen.test", "A"), ("client.test.dbl.test", "A"),
        ("amx.test", "MX"), ("amx.test", "A"), ("amx.test", "AAAA"), ("amx.test", "TXT"),
        ("good.test", "MX"), ("mx.good.test", "A"), ("mx.good.test", "AAAA")])
    # A second connection from the same client: all in the resolver's cache, answers
    # and NXDOMAIN alike (TTL 300, the SOA's minimum for the negative ones).
    mark = dns_server.mark()
    assert all(r[0] in "23" for r in converse(sinkhole, session))
    sinkhole.wait_for("close", 2)
    assert dns_server.queries(mark) == []


def test_a_silent_dns_server_costs_one_timeout_and_gives_unknown(
        sinkhole_factory: Factory, silent_dns: SilentServer, tmp_path: Path) -> None:
    rules = one_rule("connect", 'dnsbl = ["zen.test"]')
    sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, silent_dns.address, rules,
                            "--dns-timeout", "1")
    assert converse(sinkhole, at(z.GOOD))[0].startswith("421 4.4.3 ")  # the default
    sinkhole.wait_for("close")
    [connect] = sinkhole.events("connect")
    assert connect["fcrdns"] == "unknown"
    asked = silent_dns.received
    assert asked >= 2  # the PTR and the DNSBL, sent and never answered
    # From now on the resolver is taken for unreachable: no query, no wait, same answer.
    for _ in range(5):
        assert converse(sinkhole, at(z.LISTED))[0].startswith("421 4.4.3 ")
    sinkhole.wait_for("close", 6)
    assert silent_dns.received == asked


@pytest.mark.interop
def test_a_silent_server_for_one_zone_holds_up_no_other_session(
        sinkhole_factory: Factory, silent_dns: SilentServer, tmp_path: Path) -> None:
    # unbound forwards slow.test to a server that never answers and serves the rest.
    server = start_unbound(require_program("unbound"), tmp_path / "unbound",
                           slow_to=silent_dns.address)
    try:
        rules = one_rule("rcpt", 'recipient_has = ["baddom"]')
        sinkhole = dns_sinkhole(sinkhole_factory, tmp_path, server.address, rules,
                                "--dns-timeout", "5")
        with socket.create_connection(("127.0.0.1", sinkhole.port), timeout=30) as slow:
            reader = slow.makefile("rb")
            read_reply(reader)
            for command in ("EHLO slow.client", "MAIL FROM:<a@good.test>"):
                slow.sendall(command.encode() + b"\r\n")
                read_reply(reader)
            slow.sendall(b"RCPT TO:<b@slow.test>\r\n")  # its decision waits on slow.test
            other = converse(sinkhole, Client(("EHLO other.client", "MAIL FROM:<a@good.test>",
                                               "RCPT TO:<b@good.test>", "DATA",
                                               "Subject: hi\r\n\r\nbody\r\n.")))
            assert other[-1].startswith("250 2.0.0 queued as")
            assert not sinkhole.events("policy")  # the slow session is still waiting
            assert read_reply(reader) == "451 4.4.3 Temporary DNS failure; try again later"
    finally:
        server.stop()


@pytest.mark.parametrize("args", [
    ("--dns-timeout", "nan"), ("--dns-timeout", "-1"), ("--dns-timeout", "0"),
    ("--dns-timeout", "61"), ("--dns-server", "ns.example.org"),
    ("--dns-server", "127.0.0.1:99999"), ("--no-dns", "--dns-server", "127.0.0.1"),
    ("--no-dns", "--rules", "RULES"),
])
def test_dns_option_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(one_rule("connect", 'dns = ["nodns"]'))
    argv = [a.replace("RULES", str(rules)) for a in args]
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                             str(tmp_path / "m"), *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("trio-smtpd: ") and len(result.stderr.splitlines()) == 1


def test_helo_rules_need_no_dns_and_dns_rules_cannot_be_reloaded_without(
        sinkhole_factory: Factory, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(one_rule("helo", 'helo_has = ["bareip"]'))
    sinkhole = sinkhole_factory("--rules", str(path))  # (the fixture adds --no-dns)
    assert MATCHED in converse(sinkhole, ehlo("192.0.2.1"))[-1]
    assert converse(sinkhole, ehlo("mail.test"))[-1].startswith("250")
    path.write_text(one_rule("connect", 'dnsbl = ["zen.test"]'))
    sinkhole.process.send_signal(signal.SIGHUP)
    sinkhole.wait_for("rules-reload")
    [reload] = sinkhole.events("rules-reload")
    assert "previous rules kept" in str(reload["outcome"]) and "--no-dns" in str(
        reload["error"])
    assert MATCHED in converse(sinkhole, ehlo("192.0.2.1"))[-1]  # the old rules hold
