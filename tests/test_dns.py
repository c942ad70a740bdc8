"""trio_smtpd.dns: the resolver's cache, deadlines, concurrency bound and dead-server
handling (a fake network under trio's MockClock), then real answers from unbound."""

from __future__ import annotations

import time
from pathlib import Path

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import trio

from tests.dnsserver import SilentServer, Unbound
from tests.fakedns import HANG, FakeResolver, a
from trio_smtpd._dnscache import TTLCache
from trio_smtpd.dns import (
    Answer,
    Resolver,
    Status,
    combine_addresses,
    parse_nameserver,
    reverse_name,
)


async def test_an_answer_is_kept_for_its_ttl(autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"x.test A": a("192.0.2.1", ttl=60)})
    first = await resolver.query("x.test", "A")
    assert first.ok and [str(r) for r in first.records] == ["192.0.2.1"]
    assert await resolver.query("X.test.", "A") == first  # case and final dot: one name
    assert resolver.sent == ["x.test A"] and resolver.stats.cache_hits == 1
    await trio.sleep(61)
    await resolver.query("x.test", "A")
    assert resolver.sent == ["x.test A"] * 2


async def test_negative_answers_are_kept_failures_never(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"nx.test A": Answer(Status.NXDOMAIN, ttl=30),
                             "nodata.test A": Answer(Status.NODATA, ttl=0),
                             "fail.test A": Answer(Status.TEMPFAIL, detail="SERVFAIL")})
    for _ in range(2):
        assert (await resolver.query("nx.test", "A")).status is Status.NXDOMAIN
        assert (await resolver.query("nodata.test", "A")).missing
        assert (await resolver.query("fail.test", "A")).unknown
    # NXDOMAIN kept (30 s); NODATA with TTL 0 and the temporary failure asked again.
    assert sorted(resolver.sent) == ["fail.test A", "fail.test A", "nodata.test A",
                                     "nodata.test A", "nx.test A"]


async def test_ttls_are_capped(autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"x.test A": a("192.0.2.1", ttl=86400)}, max_ttl=10)
    await resolver.query("x.test", "A")
    await trio.sleep(11)
    await resolver.query("x.test", "A")
    assert len(resolver.sent) == 2


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    now = [0.0]
    cache: TTLCache[str] = TTLCache(2, lambda: now[0])
    cache.put("a", "A", 60)
    cache.put("b", "B", 60)
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C", 60)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == ("A", None, "C", 2)
    now[0] = 60.0
    assert cache.get("a") is None and len(cache) == 1


async def test_concurrent_lookups_of_one_name_share_one_query(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"x.test A": a("192.0.2.1")}, delays={"x.test A": 1.0})
    results: list[Answer[dns.rdata.Rdata]] = []

    async def ask() -> None:
        results.append(await resolver.query("x.test", "A"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
    assert resolver.sent == ["x.test A"] and len(results) == 5
    assert all(r.ok for r in results)


async def test_concurrent_queries_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    names = [f"n{i}.test A" for i in range(6)]
    resolver = FakeResolver({n: a("192.0.2.1") for n in names},
                            delays={n: 1.0 for n in names}, max_concurrent=2)
    results: list[Answer[dns.rdata.Rdata]] = []

    async def ask(name: str) -> None:
        results.append(await resolver.query(name, "A"))

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(ask, name.split()[0])
    assert resolver.most_in_flight == 2 and len(resolver.sent) == 6
    assert all(r.ok for r in results)  # waiting for a turn fitted in the deadline


async def test_a_lookup_ends_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"x.test A": HANG}, timeout=3.0)
    start = trio.current_time()
    answer = await resolver.query("x.test", "A")
    assert answer.status is Status.TIMEOUT and answer.unknown
    assert trio.current_time() - start == 3.0
    later = trio.current_time() + 1.0  # a caller's own deadline comes first
    other = FakeResolver({"x.test A": HANG}, timeout=3.0)
    assert (await other.query("x.test", "A", deadline=later)).status is Status.TIMEOUT
    assert trio.current_time() == later


async def test_a_dead_resolver_costs_one_timeout_not_one_per_lookup(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({f"n{i}.test A": HANG for i in range(20)}, timeout=2.0,
                            down_for=30.0)
    statuses: list[Status] = []

    async def ask(i: int) -> None:
        statuses.append((await resolver.query(f"n{i}.test", "A")).status)

    async with trio.open_nursery() as nursery:  # ten connections at once
        for i in range(10):
            nursery.start_soon(ask, i)
    assert statuses == [Status.TIMEOUT] * 10 and len(resolver.sent) == 10
    start = trio.current_time()
    for i in range(10, 15):  # from now on: "unknown" at once, nothing sent
        answer = await resolver.query(f"n{i}.test", "A")
        assert answer.status is Status.TEMPFAIL and "unreachable" in answer.detail
    assert trio.current_time() == start and len(resolver.sent) == 10
    assert resolver.stats.unreachable == 5
    await trio.sleep(30)
    assert (await resolver.query("n15.test", "A")).status is Status.TIMEOUT  # tried again
    assert len(resolver.sent) == 11


async def test_a_slow_zone_on_a_live_resolver_is_not_taken_for_a_dead_one(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"dead.dnsbl.test A": HANG, "ok.test A": a("192.0.2.1"),
                             "later.test A": a("192.0.2.2")},
                            delays={"ok.test A": 0.5}, timeout=2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resolver.query, "dead.dnsbl.test", "A")
        nursery.start_soon(resolver.query, "ok.test", "A")
    assert (await resolver.query("later.test", "A")).ok  # sent: the resolver answered
    assert resolver.stats.unreachable == 0 and resolver.stats.timeouts == 1


async def test_a_cancelled_first_asker_does_not_fail_the_next(
        autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver({"x.test A": a("192.0.2.1")}, delays={"x.test A": 2.0})
    results: list[Answer[dns.rdata.Rdata]] = []

    async def first() -> None:
        with trio.move_on_after(1.0):  # e.g. its client hung up
            await resolver.query("x.test", "A")

    async def second() -> None:
        await trio.sleep(0.1)
        results.append(await resolver.query("x.test", "A"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        nursery.start_soon(second)
    assert [r.ok for r in results] == [True] and len(resolver.sent) == 2


async def test_no_nameservers_means_unknown_at_once(tmp_path: Path) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# nothing here\n")
    resolver = Resolver(resolv_conf=str(empty))
    assert resolver.configuration_error and resolver.nameservers == []
    answer = await resolver.query("good.test", "A")
    assert answer.status is Status.TEMPFAIL and resolver.stats.queries == 0


async def test_a_name_that_is_not_one_is_no_such_name() -> None:
    resolver = FakeResolver()
    answer = await resolver.query("a..b.test", "A")
    assert answer.status is Status.NXDOMAIN and "not a DNS name" in answer.detail
    assert resolver.sent == []


def test_both_address_families_make_one_answer() -> None:
    ok = Answer(Status.OK, ("192.0.2.1",), 60)
    timeout = Answer[str](Status.TIMEOUT, detail="slow")
    nodata, nx = Answer[str](Status.NODATA, ttl=60), Answer[str](Status.NXDOMAIN, ttl=60)
    assert combine_addresses(ok, timeout).ok
    assert "AAAA: timeout slow" in combine_addresses(ok, timeout).detail
    assert combine_addresses(nodata, timeout).status is Status.TIMEOUT
    assert combine_addresses(nx, nx).status is Status.NXDOMAIN
    assert combine_addresses(nodata, nodata).status is Status.NODATA


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53)), ("[2001:db8::1]", ("2001:db8::1", 53)),
])
def test_nameserver_syntax(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["ns.example:53", "127.0.0.1:0", "127.0.0.1:x", "",
                                  "[::1]5353", "127.0.0.1:65536"])
def test_bad_nameservers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_reverse_names() -> None:
    assert reverse_name("192.0.2.7") == "7.2.0.192.in-addr.arpa"
    assert reverse_name("192.0.2.7", "zen.example.") == "7.2.0.192.zen.example"
    assert reverse_name("::ffff:192.0.2.7", "zen.example") == "7.2.0.192.zen.example"
    assert reverse_name("2001:db8::1") == ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0."
                                           "8.b.d.0.1.0.0.2.ip6.arpa")


# ---------------------------------------------------------------- a real DNS server


async def test_real_answers(dns_server: Unbound) -> None:
    resolver = Resolver([dns_server.address], timeout=5.0)
    assert (await resolver.ptr("127.0.0.1")).records == ("good.test",)
    assert (await resolver.ptr("127.0.0.5")).status is Status.NXDOMAIN
    assert (await resolver.mx("nullmx.test")).records == ((0, "."),)
    assert (await resolver.mx("lhmx.test")).records == ((10, "localhost"),)
    assert (await resolver.mx("good.test")).records == ((10, "mx.good.test"),)
    assert (await resolver.addresses("amx.test")).records == ("11.0.0.2",)
    assert (await resolver.addresses("v6only.test")).records == ("2001:db8::10",)
    assert (await resolver.txt("7.0.0.127.zen.test")).records == (
        "Listed for spam trap hits, see zen.test/7",)
    nx = await resolver.mx("nosuch.test")
    assert nx.status is Status.NXDOMAIN and nx.ttl == 300  # the SOA's minimum (RFC 2308)
    nodata = await resolver.query("good.test", "AAAA")
    assert nodata.status is Status.NODATA and nodata.ttl == 300
    refused = await resolver.mx("refused.test")
    assert refused.status is Status.TEMPFAIL and "REFUSED" in refused.detail


async def test_the_cache_saves_queries_at_the_server(dns_server: Unbound) -> None:
    resolver = Resolver([dns_server.address])
    mark = dns_server.mark()
    for _ in range(3):
        assert (await resolver.ptr("127.0.0.4")).ok
        assert (await resolver.mx("nosuch.test")).status is Status.NXDOMAIN
    await trio.sleep(0.2)  # (unbound writes its log as it goes)
    assert sorted(dns_server.queries(mark)) == [("4.0.0.127.in-addr.arpa", "PTR"),
                                                ("nosuch.test", "MX")]


async def test_a_silent_server_times_out_then_is_skipped(silent_dns: SilentServer) -> None:
    resolver = Resolver([silent_dns.address], timeout=0.5)
    first = await resolver.ptr("127.0.0.1")
    assert first.status is Status.TIMEOUT
    deadline = time.monotonic() + 5
    while silent_dns.received < 1 and time.monotonic() < deadline:
        await trio.sleep(0.01)
    sent = silent_dns.received
    assert sent >= 1
    second = await resolver.ptr("127.0.0.2")  # no query leaves: taken for unreachable
    assert second.status is Status.TEMPFAIL and resolver.stats.queries == 1
    await trio.sleep(0.1)
    assert silent_dns.received == sent
