"""One connection's DNS facts (ClientLookups) on trio's mock clock: each looked up once,
each done by its deadline, the cost of a dead resolver, and DNS turned off."""

from __future__ import annotations

import trio
import trio.testing

from tests.fakedns import HANG, FakeResolver, a, records
from trio_smtpd.sinkhole.dnsfacts import (
    RDNS,
    Listing,
    MailDomain,
    ReverseDNS,
    Wants,
    dbl_key,
    dnsbl_key,
    domain_key,
)
from trio_smtpd.sinkhole.lookups import MAX_FACTS, ClientLookups

CLIENT = "192.0.2.7"
PTR = "7.2.0.192.in-addr.arpa PTR"
WANTS = Wants(dnsbl=frozenset({"zen.test"}), dbl_host=frozenset({"dbl.test"}),
              dbl_helo=frozenset({"dbl.test"}), dbl_sender=frozenset({"dbl.test"}),
              rdns=True, sender_domain=True, recipient_domain=True)


async def test_connect_facts_share_one_deadline(autojump_clock: trio.testing.MockClock
                                                ) -> None:
    # The PTR answers after 1 s; everything after it never does. The chain (PTR, then
    # the name's addresses and its DBL listing) still ends at connect + timeout, not later.
    resolver = FakeResolver({PTR: records("PTR", "h.test.")}, delays={PTR: 1.0},
                            default=HANG, timeout=5.0)
    async with trio.open_nursery() as nursery:
        lookups = ClientLookups(resolver, nursery, CLIENT, timeout=5.0)
        start = trio.current_time()
        lookups.prefetch(WANTS)
        await lookups.connect_facts(WANTS)
        assert trio.current_time() - start == 5.0
        rdns = lookups.values[RDNS]
        assert isinstance(rdns, ReverseDNS) and rdns.unresolved == ("h.test",)
        assert rdns.has("unknown") is True
        listing = lookups.values[dbl_key("h.test", "dbl.test")]
        assert isinstance(listing, Listing) and listing.listed is None
        nursery.cancel_scope.cancel()


async def test_a_dead_resolver_costs_a_session_one_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver(default=HANG, timeout=5.0)
    async with trio.open_nursery() as nursery:
        lookups = ClientLookups(resolver, nursery, CLIENT, timeout=5.0)
        start = trio.current_time()
        lookups.prefetch(WANTS)
        await lookups.connect_facts(WANTS)
        assert trio.current_time() - start == 5.0
        # The resolver answered nothing at all meanwhile: later facts cost nothing.
        later = trio.current_time()
        lookups.prefetch(WANTS, helo="mail.test", sender="a@spammy.test",
                         recipient="b@good.test")
        await lookups.wait([domain_key("spammy.test"), domain_key("good.test"),
                            dbl_key("mail.test", "dbl.test"), dbl_key("spammy.test",
                                                                      "dbl.test")])
        assert trio.current_time() == later
        sender = lookups.values[domain_key("spammy.test")]
        assert isinstance(sender, MailDomain) and sender.verdict == "unknown"
        nursery.cancel_scope.cancel()


async def test_each_fact_is_looked_up_once(autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({PTR: records("PTR", "h.test."), "h.test A": a(CLIENT),
                             "7.2.0.192.zen.test A": a("127.0.0.2"),
                             "7.2.0.192.zen.test TXT": records("TXT", '"bad"')})
    listed: list[Listing] = []
    async with trio.open_nursery() as nursery:
        lookups = ClientLookups(resolver, nursery, CLIENT, timeout=5.0,
                                on_listing=listed.append)
        for _ in range(3):  # connect, HELO, MAIL... each asks again
            lookups.prefetch(WANTS, helo="h.test", sender="a@h.test")
            await lookups.connect_facts(WANTS)
            await lookups.wait([RDNS, dnsbl_key("zen.test"), domain_key("h.test")])
        assert await lookups.confirmed_name() == "h.test"
    assert len(resolver.sent) == len(set(resolver.sent))
    # PTR, A+AAAA of the name; zen A+TXT; DBL of the name (host and HELO: one key) and
    # of the sender domain (the same name again); the domain's MX (then its A/AAAA: cached).
    assert sorted(resolver.sent) == sorted([
        PTR, "h.test A", "h.test AAAA", "7.2.0.192.zen.test A", "7.2.0.192.zen.test TXT",
        "h.test.dbl.test A", "h.test MX"])
    assert [x.reason for x in listed] == ["bad"]  # reported once
    assert lookups.summary() == {
        "rdns": ["h.test"], "fcrdns": "good", "confirmed": "h.test",
        "listings": [{"list": "zen.test", "kind": "dnsbl", "subject": CLIENT,
                      "codes": ["127.0.0.2"], "reason": "bad"}]}


async def test_facts_per_connection_are_bounded(autojump_clock: trio.testing.MockClock
                                                ) -> None:
    resolver = FakeResolver()  # every name: NXDOMAIN
    wants = Wants(recipient_domain=True)
    async with trio.open_nursery() as nursery:
        lookups = ClientLookups(resolver, nursery, CLIENT, timeout=5.0)
        for n in range(MAX_FACTS + 50):  # RCPT after RSET after RCPT, new domains each
            lookups.prefetch(wants, recipient=f"x@d{n}.test")
        await lookups.settle()
    assert len(lookups.values) == MAX_FACTS + 51  # (+ the client's own reverse DNS)
    assert len(resolver.sent) == MAX_FACTS  # one query each (NXDOMAIN), then no more
    last = lookups.values[domain_key(f"d{MAX_FACTS + 49}.test")]
    assert isinstance(last, MailDomain) and last.verdict == "unknown"
    assert "more than" in last.why


async def test_a_session_that_ends_leaves_no_waiter_hanging(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver(default=HANG, timeout=30.0)
    async with trio.open_nursery() as nursery:
        lookups = ClientLookups(resolver, nursery, CLIENT, timeout=30.0)
        lookups.prefetch(WANTS)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()  # the client left
    rdns = lookups.values[RDNS]
    assert isinstance(rdns, ReverseDNS) and rdns.failed  # known as unknown, not missing
    await lookups.wait([RDNS])  # returns at once


async def test_with_dns_off_every_fact_is_unknown_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    lookups = ClientLookups(None, None, CLIENT, timeout=5.0)
    start = trio.current_time()
    await lookups.wait([RDNS, dnsbl_key("zen.test"), domain_key("good.test")])
    assert trio.current_time() == start
    rdns = lookups.values[RDNS]
    assert isinstance(rdns, ReverseDNS) and rdns.failed == "DNS lookups are off"
    assert await lookups.confirmed_name() is None and lookups.summary() is None
    assert not lookups.enabled
