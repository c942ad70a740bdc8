"""The sinkhole's facts about a client: four-valued logic, HELO attributes, the FCrDNS
classes, and the DNS checks against a real server (unbound on loopback)."""

from __future__ import annotations

import pytest
import trio

from tests import dnsserver as z
from tests.dnsserver import Unbound
from tests.fakedns import FakeResolver, a
from trio_smtpd.dns import Answer, Resolver, Status
from trio_smtpd.sinkhole.checks import _confirm, _printable, listing, mail_domain, reverse_dns
from trio_smtpd.sinkhole.dnsfacts import ReverseDNS, dbl_name, lookup_domain
from trio_smtpd.sinkhole.helo import helo_attributes
from trio_smtpd.sinkhole.logic import UNKNOWN, Pending, Truth, all_of, any_of, negate

P = Pending(frozenset({("rdns",)}))
Q = Pending(frozenset({("dnsbl", "zen.test")}))


@pytest.mark.parametrize(("values", "conjunction", "disjunction"), [
    ([True, True], True, True), ([True, False], False, True), ([False, False], False, False),
    ([True, UNKNOWN], UNKNOWN, True), ([False, UNKNOWN], False, UNKNOWN),
    ([True, P], P, True), ([False, P], False, P), ([UNKNOWN, P], P, P),
    ([P, Q], Pending(P.keys | Q.keys), Pending(P.keys | Q.keys)), ([], True, False),
])
def test_kleene_logic_with_pending(values: list[Truth], conjunction: Truth,
                                   disjunction: Truth) -> None:
    assert all_of(values) == conjunction
    assert any_of(values) == disjunction


def test_short_circuits_and_negation() -> None:
    def boom() -> Truth:
        raise AssertionError("evaluated past a decisive value")

    assert all_of(v() for v in (lambda: False, boom)) is False
    assert any_of(v() for v in (lambda: True, boom)) is True
    assert (negate(True), negate(False), negate(UNKNOWN), negate(P)) == (False, True,
                                                                         UNKNOWN, P)
    with pytest.raises(TypeError):
        bool(UNKNOWN)  # a forgotten three-valued check fails loudly


@pytest.mark.parametrize(("name", "verb", "expected"), [
    ("mail.example.org", "EHLO", {"ehlo"}),
    ("mail.example.org", "HELO", {"helo"}),
    ("mail.example.org", "LHLO", {"ehlo"}),
    ("fred", "EHLO", {"ehlo", "nodots"}),
    ("", "EHLO", {"ehlo", "none", "nodots"}),
    (".", "EHLO", {"ehlo", "bogus", "nodots"}),
    ("my_pc.example", "EHLO", {"ehlo", "bogus"}),
    ("mail.example.org.", "EHLO", {"ehlo", "bogus"}),
    ("[garbage]", "EHLO", {"ehlo", "bogus", "nodots"}),
    ("bücher.example", "EHLO", {"ehlo"}),
    # Issue 16: a name spelt with a character no name may hold is not a host name.
    ("mx.exa\u00admple.com", "EHLO", {"ehlo", "bogus"}),
    ("mx.example\u2060.com", "EHLO", {"ehlo", "bogus"}),
    ("mx.exa\ufe0fmple.com", "EHLO", {"ehlo", "bogus"}),
    ("192.0.2.9", "EHLO", {"ehlo", "bareip", "otherip"}),
    ("[192.0.2.9]", "EHLO", {"ehlo", "properip", "otherip"}),
    ("[198.51.100.2]", "EHLO", {"ehlo", "properip", "remip"}),
    ("198.51.100.2", "EHLO", {"ehlo", "bareip", "remip"}),
    ("[198.51.100.1]", "EHLO", {"ehlo", "properip", "myip"}),
    ("[IPv6:2001:db8::1]", "EHLO", {"ehlo", "properip", "otherip"}),
    ("2001:db8::1", "EHLO", {"ehlo", "bareip", "otherip"}),
    # Found by review (2026-12-02): RFC 5321 4.1.3's literals are "[IPv4]" and
    # "[IPv6:IPv6]"; an IPv6 address without its tag, or an IPv4 one with it, is neither.
    ("[2001:db8::1]", "EHLO", {"ehlo", "bogus"}),
    ("[IPv6:192.0.2.9]", "EHLO", {"ehlo", "bogus"}),
    ("[IPv6:::ffff:192.0.2.9]", "EHLO", {"ehlo", "properip", "otherip"}),  # (IPv6v4)
])
def test_helo_attributes(name: str, verb: str, expected: set[str]) -> None:
    assert helo_attributes(name, verb, "198.51.100.2", "198.51.100.1") == expected


def test_helo_addresses_compare_as_addresses() -> None:
    # An IPv4 client seen through an IPv6 socket is still that IPv4 client.
    assert "remip" in helo_attributes("[192.0.2.5]", "EHLO", "::ffff:192.0.2.5", "::1")


def rdns(**kw: tuple[str, ...]) -> ReverseDNS:
    return ReverseDNS(names=tuple(sorted({n for v in kw.values() for n in v})), **kw)


@pytest.mark.parametrize(("value", "classes"), [
    # sinksmtp's dnsGetter: nodns = no verified name; exists = some; noforward and
    # inconsistent = some such name; good = verified and no bad name.
    (ReverseDNS(), {"nodns"}),
    (rdns(verified=("a.test",)), {"exists", "good"}),
    (rdns(nofwd=("a.test",)), {"nodns", "noforward"}),
    (rdns(inconsistent=("a.test",)), {"nodns", "inconsistent"}),
    (rdns(verified=("a.test",), nofwd=("b.test",)), {"exists", "noforward"}),
    (rdns(verified=("a.test",), inconsistent=("b.test",)), {"exists", "inconsistent"}),
])
def test_fcrdns_classes_as_sinksmtp_has_them(value: ReverseDNS, classes: set[str]) -> None:
    for cls in ("nodns", "noforward", "inconsistent", "exists", "good", "unknown"):
        assert value.has(cls) is (cls in classes), cls


def test_fcrdns_classes_when_the_dns_could_not_say() -> None:
    failed = ReverseDNS(failed="PTR timeout")
    assert failed.has("unknown") is True
    assert all(failed.has(c) is UNKNOWN for c in ("nodns", "exists", "good", "noforward"))
    partly = rdns(verified=("a.test",), unresolved=("b.test",))
    assert partly.has("exists") is True and partly.has("nodns") is False
    assert partly.has("good") is UNKNOWN and partly.has("noforward") is UNKNOWN
    assert rdns(nofwd=("a.test",), unresolved=("b.test",)).has("good") is False
    assert (failed.verdict, partly.verdict, ReverseDNS().verdict) == ("unknown", "exists",
                                                                      "nodns")


@pytest.mark.parametrize(("text", "name"), [
    ("Mail.Example.ORG.", "mail.example.org"), ("192.0.2.1", None), ("[192.0.2.1]", None),
    ("my_pc", None), ("", None), (None, None), ("x" * 64 + ".test", None)])
def test_names_worth_asking_a_domain_list_about(text: str | None, name: str | None) -> None:
    assert dbl_name(text) == name


def test_a_txt_reason_reaches_the_log_tame() -> None:
    hostile = "listed\r\nevent=forged\u2028" + "x" * 300
    tame = _printable(hostile)
    assert tame.startswith("listed  event=forged ") and len(tame) == 200
    assert tame.isprintable()


def test_lookup_domain() -> None:
    assert lookup_domain("user@Example.ORG") == "example.org"
    assert lookup_domain("") is None and lookup_domain("user@[192.0.2.1]") is None
    assert lookup_domain('"a@b"@example.org') == "example.org"


def answer(status: str, *records: str) -> Answer[str]:
    return Answer(Status(status), records)


@pytest.mark.parametrize(("client", "a", "aaaa", "verdict"), [
    ("192.0.2.7", answer("ok", "192.0.2.7"), answer("nodata"), "verified"),
    ("::ffff:192.0.2.7", answer("ok", "192.0.2.7"), answer("timeout"), "verified"),
    ("2001:db8::7", answer("nodata"), answer("ok", "2001:db8:0::7"), "verified"),
    ("2001:db8::7", answer("ok", "192.0.2.7"), answer("nodata"), "inconsistent"),
    ("192.0.2.7", answer("ok", "192.0.2.8"), answer("timeout"), "inconsistent"),
    ("192.0.2.7", answer("timeout"), answer("ok", "2001:db8::7"), "unresolved"),
    ("192.0.2.7", answer("nodata"), answer("tempfail"), "unresolved"),
    ("192.0.2.7", answer("nxdomain"), answer("nxdomain"), "nofwd"),
])
def test_forward_confirmation(client: str, a: Answer[str], aaaa: Answer[str],
                              verdict: str) -> None:
    # Only the client's own family can confirm; the other tells "inconsistent" from
    # "no address at all"; a failure that could change the verdict leaves it open.
    assert _confirm(client, a, aaaa) == verdict


@pytest.mark.parametrize(("codes", "listed"), [
    (("127.0.0.2",), True), (("127.0.0.2", "127.0.0.4"), True),
    (("198.51.100.1",), False),  # a resolver that rewrites NXDOMAIN: no listing
    (("127.255.255.254",), None),  # Spamhaus refusing the query: unknown
])
async def test_listing_answers(codes: tuple[str, ...], listed: bool | None) -> None:
    resolver = FakeResolver({"7.2.0.192.zen.test A": a(*codes)})
    result = await listing(resolver, "dnsbl", "192.0.2.7", "zen.test",
                           trio.current_time() + 5)
    assert result.listed is listed


# ---------------------------------------------------------------- against unbound


async def run_check(dns_server: Unbound, check, *args):  # type: ignore[no-untyped-def]
    resolver = Resolver([dns_server.address], timeout=5.0)
    return await check(resolver, *args, trio.current_time() + 5.0)


@pytest.mark.parametrize(("client", "verdict", "verified"), [
    (z.GOOD, "good", ("good.test",)), (z.NOFORWARD, "noforward", ()),
    (z.INCONSISTENT, "inconsistent", ()), (z.EXISTS, "exists", ("mixed.test",)),
    (z.NODNS, "nodns", ()), (z.PTR_REFUSED, "unknown", ()),
    (z.DYNAMIC, "good", ("h8.dyn.test",)),
])
async def test_reverse_dns(dns_server: Unbound, client: str, verdict: str,
                           verified: tuple[str, ...]) -> None:
    result = await run_check(dns_server, reverse_dns, client)
    assert (result.verdict, result.verified) == (verdict, verified)


async def test_dnsbl_listings_with_reasons_ipv4_and_ipv6(dns_server: Unbound) -> None:
    hit = await run_check(dns_server, listing, "dnsbl", z.LISTED, "zen.test")
    assert (hit.listed, hit.codes, hit.reason) == (True, ("127.0.0.2",), z.ZEN_REASON)
    v6 = await run_check(dns_server, listing, "dnsbl", z.LISTED_V6, "zen.test")
    assert (v6.listed, v6.reason) == (True, z.ZEN_V6_REASON)
    miss = await run_check(dns_server, listing, "dnsbl", z.GOOD, "zen.test")
    assert (miss.listed, miss.reason) == (False, None)
    refused = await run_check(dns_server, listing, "dnsbl", z.LISTED, "refused.test")
    assert refused.listed is None and "tempfail" in refused.detail


async def test_dbl_listings(dns_server: Unbound) -> None:
    hit = await run_check(dns_server, listing, "dbl", "spammy.test", "dbl.test")
    assert (hit.listed, hit.reason) == (True, z.DBL_REASONS["spammy.test"])
    miss = await run_check(dns_server, listing, "dbl", "good.test", "dbl.test")
    assert miss.listed is False


@pytest.mark.parametrize(("domain", "verdict", "why"), [
    ("good.test", "resolves", ""), ("amx.test", "resolves", ""),
    ("nullmx.test", "baddom", "null MX (RFC 7505)"), ("lhmx.test", "baddom", "localhost"),
    ("private.test", "baddom", "non-global addresses: 10.1.2.3"),
    ("v6only.test", "baddom", "non-global"),  # 2001:db8::/32 is for documentation
    ("nosuch.test", "baddom", "no such domain"), ("refused.test", "unknown", "tempfail"),
])
async def test_mail_domains(dns_server: Unbound, domain: str, verdict: str, why: str) -> None:
    result = await run_check(dns_server, mail_domain, domain)
    assert result.verdict == verdict and why in result.why
