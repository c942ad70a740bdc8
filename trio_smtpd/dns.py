"""Asynchronous DNS lookups for trio programs, on dnspython's resolver (trio backend).

One :class:`Resolver` serves a whole program, the sinkhole's policy facts and an
application's own checks alike::

    from trio_smtpd.dns import Resolver

    resolver = Resolver(["127.0.0.1:5353"], timeout=5.0)  # None: /etc/resolv.conf
    answer = await resolver.ptr("192.0.2.1")
    if answer.ok:
        names = answer.records          # ("host.example.org",)
    elif answer.unknown:
        ...                             # TEMPFAIL or TIMEOUT: decide later, not "no"

What it guarantees:

* **No exception for a DNS reason.** Every failure is an :class:`Answer` with a status:
  ``OK``, ``NXDOMAIN`` (no such name), ``NODATA`` (the name has no record of that
  type), ``TEMPFAIL`` (SERVFAIL, REFUSED, no nameserver, a network error) or
  ``TIMEOUT``. A mail server can always answer 4xx instead of crashing a session.
* **A deadline on every lookup**: ``timeout`` seconds from the call, or the ``deadline``
  (in ``trio.current_time()`` terms) the caller gives, whichever it says.
* **A cache that respects TTLs**, positive and negative (RFC 2308: the SOA's minimum),
  capped at ``max_ttl``, bounded to ``cache_size`` entries (least recently used go
  first). Concurrent lookups of the same name and type share one query.
* **A bound on concurrent queries** (``max_concurrent``): more wait their turn, within
  their deadline.
* **A dead resolver costs one timeout, not one per lookup.** When a lookup times out and
  the nameservers answered nothing at all while it waited, they are taken as unreachable
  for ``down_for`` seconds: lookups meanwhile return ``TEMPFAIL`` at once, without a
  query. A nameserver that is alive but slow for one zone (a dead DNSBL, say) keeps
  answering other lookups, so it does not trip this.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import trio

from ._dnscache import TTLCache

__all__ = ["Answer", "Resolver", "ResolverStats", "Status", "parse_nameserver",
           "reverse_name"]

log = logging.getLogger("trio_smtpd.dns")

T = TypeVar("T")
U = TypeVar("U")


class Status(enum.Enum):
    OK = "ok"
    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, with no record of this type
    TEMPFAIL = "tempfail"  # SERVFAIL, REFUSED, no nameservers, network error
    TIMEOUT = "timeout"  # no answer by the deadline


@dataclass(frozen=True)
class Answer(Generic[T]):
    """The result of one lookup: a status, the records (only with OK) and why not."""

    status: Status
    records: tuple[T, ...] = ()
    #: Seconds the answer may be kept (positive or negative); 0 for failures.
    ttl: int = 0
    #: Why a lookup failed, for logs.
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def missing(self) -> bool:
        """The DNS said for sure there is nothing (NXDOMAIN or NODATA)."""
        return self.status in (Status.NXDOMAIN, Status.NODATA)

    @property
    def unknown(self) -> bool:
        """The DNS could not say (TEMPFAIL or TIMEOUT): ask again later."""
        return self.status in (Status.TEMPFAIL, Status.TIMEOUT)


@dataclass
class ResolverStats:
    """Counters, for tests, benchmarks and the curious."""

    lookups: int = 0  # calls of query() (addresses() makes two)
    cache_hits: int = 0
    queries: int = 0  # lookups sent to the nameservers (shared ones count once)
    timeouts: int = 0
    tempfails: int = 0
    unreachable: int = 0  # answered TEMPFAIL at once: nameservers taken for unreachable


class _Flight:
    """A query in progress, which later askers of the same question wait for."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: Answer[dns.rdata.Rdata] | None = None  # None: its caller was cancelled


# (name in lower case without the final dot, type): found without parsing the name, which
# costs more than the rest of a cache hit.
_Key = tuple[str, str]


class Resolver:
    def __init__(self, nameservers: Sequence[str] | None = None, *, timeout: float = 5.0,
                 max_concurrent: int = 64, cache_size: int = 10_000,
                 max_ttl: float = 3600.0, down_for: float = 30.0,
                 resolv_conf: str = "/etc/resolv.conf") -> None:
        """``nameservers``: ``HOST[:PORT]`` IP addresses (``[IPv6]:PORT``); None reads
        ``resolv_conf``. A configuration without nameservers is not an error: every
        lookup is then ``TEMPFAIL`` at once and ``configuration_error`` says why."""
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.timeout = timeout
        self.max_ttl = max_ttl
        self.down_for = down_for
        self.stats = ResolverStats()
        #: Told of every lookup (for metrics): its record type, status, whether the
        #: cache answered it and how long it took (seconds; 0 from the cache).
        self.on_lookup: Callable[[str, Status, bool, float], None] | None = None
        self.configuration_error: str | None = None
        self._stub = self._make_stub(nameservers, resolv_conf)
        self._stub.timeout = min(2.0, timeout)  # each try; the lifetime is the deadline
        self._backend = dns.asyncbackend.get_backend("trio")
        self._cache: TTLCache[Answer[dns.rdata.Rdata]] = TTLCache(cache_size,
                                                                  trio.current_time)
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._flights: dict[_Key, _Flight] = {}
        self._last_answer = -math.inf  # when the nameservers last answered anything
        self._down_until = -math.inf

    def _make_stub(self, nameservers: Sequence[str] | None,
                   resolv_conf: str) -> dns.asyncresolver.Resolver:
        if nameservers is not None:
            stub = dns.asyncresolver.Resolver(configure=False)
            stub.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(text))
                                for text in nameservers]
            return stub
        try:
            return dns.asyncresolver.Resolver(filename=resolv_conf)
        except (dns.resolver.NoResolverConfiguration, OSError) as exc:
            self.configuration_error = f"no nameservers from {resolv_conf}: {exc}"
            stub = dns.asyncresolver.Resolver(configure=False)
            stub.nameservers = []
            return stub

    @property
    def nameservers(self) -> list[str]:
        return [str(ns) for ns in self._stub.nameservers]

    # ------------------------------------------------------------------ lookups

    async def query(self, name: str, rdtype: str, *,
                    deadline: float | None = None) -> Answer[dns.rdata.Rdata]:
        """Records of one type (``"A"``, ``"MX"``...) for an absolute name."""
        self.stats.lookups += 1
        key = (name.lower().removesuffix("."), rdtype.upper())
        cached = self._cache.get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            if self.on_lookup is not None:
                self.on_lookup(key[1], cached.status, True, 0.0)
            return cached
        kind = dns.rdatatype.RdataType.make(rdtype)
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            return Answer(Status.NXDOMAIN, detail=f"not a DNS name: {exc}")
        if deadline is None:
            deadline = trio.current_time() + self.timeout
        if self.on_lookup is None:
            return await self._shared(key, (qname, kind), deadline)
        started = trio.current_time()
        answer = await self._shared(key, (qname, kind), deadline)
        self.on_lookup(key[1], answer.status, False, trio.current_time() - started)
        return answer

    def cached(self, name: str, rdtype: str) -> Answer[dns.rdata.Rdata] | None:
        """The cached answer for a name and type, or None: no query, no wait (for
        synchronous code fed from the cache, like :mod:`trio_smtpd.verify`'s SPF)."""
        return self._cache.get((name.lower().removesuffix("."), rdtype.upper()))

    async def ptr(self, address: str, *, deadline: float | None = None) -> Answer[str]:
        """The names of an IP address (lower case, without the final dot)."""
        answer = await self.query(reverse_name(address), "PTR", deadline=deadline)
        return _convert(answer, lambda r: _host(r.target)
                        if isinstance(r, dns.rdtypes.ANY.PTR.PTR) else None)

    async def mx(self, domain: str, *,
                 deadline: float | None = None) -> Answer[tuple[int, str]]:
        """(preference, exchange) pairs; a null MX (RFC 7505) has the exchange ``"."``."""
        answer = await self.query(domain, "MX", deadline=deadline)
        return _convert(answer, lambda r: (r.preference, _host(r.exchange))
                        if isinstance(r, dns.rdtypes.ANY.MX.MX) else None)

    async def txt(self, name: str, *, deadline: float | None = None) -> Answer[str]:
        """Each TXT record's strings joined (UTF-8, undecodable bytes replaced)."""
        answer = await self.query(name, "TXT", deadline=deadline)
        return _convert(answer, lambda r: b"".join(r.strings).decode("utf-8", "replace")
                        if isinstance(r, dns.rdtypes.ANY.TXT.TXT) else None)

    async def addresses(self, name: str, *, family: str | None = None,
                        deadline: float | None = None) -> Answer[str]:
        """IP addresses: ``family="A"`` or ``"AAAA"`` for one family; by default both,
        looked up together, OK if either has some (if the other failed, ``detail`` says
        so)."""
        if family is not None:
            answer = await self.query(name, family, deadline=deadline)
            return _convert(answer, _address)
        results: dict[str, Answer[str]] = {}

        async def one(rdtype: str) -> None:
            results[rdtype] = await self.addresses(name, family=rdtype, deadline=deadline)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "A")
            nursery.start_soon(one, "AAAA")
        return combine_addresses(results["A"], results["AAAA"])

    # ------------------------------------------------------------------ machinery

    async def _shared(self, key: _Key, question: tuple[dns.name.Name, dns.rdatatype.RdataType],
                      deadline: float) -> Answer[dns.rdata.Rdata]:
        while (flight := self._flights.get(key)) is not None:
            with trio.move_on_at(deadline):
                await flight.done.wait()
            if flight.answer is not None:
                return flight.answer
            if trio.current_time() >= deadline:
                self.stats.timeouts += 1
                return Answer(Status.TIMEOUT, detail="no answer by the deadline")
            # Else its first asker went away (cancelled) before the answer: ask ourselves.
        flight = self._flights[key] = _Flight()
        try:
            flight.answer = await self._resolve(key, question, deadline)
            return flight.answer
        finally:
            del self._flights[key]
            flight.done.set()

    async def _resolve(self, key: _Key, question: tuple[dns.name.Name, dns.rdatatype.RdataType],
                       deadline: float) -> Answer[dns.rdata.Rdata]:
        if trio.current_time() < self._down_until:
            self.stats.unreachable += 1
            return Answer(Status.TEMPFAIL, detail="nameservers unreachable (recent "
                          "lookups timed out with no answer at all)")
        if not self._stub.nameservers:
            self.stats.tempfails += 1
            return Answer(Status.TEMPFAIL, detail=self.configuration_error
                          or "no nameservers")
        sent_at: float | None = None
        answer: Answer[dns.rdata.Rdata] | None = None
        with trio.move_on_at(deadline):
            async with self._limiter:
                sent_at = trio.current_time()
                self.stats.queries += 1
                answer = await self._send(*question, max(deadline - sent_at, 0.001))
        if answer is None:
            answer = Answer(Status.TIMEOUT, detail=f"no answer within {self.timeout:g} s")
        self._account(answer, sent_at)
        if not answer.unknown:
            self._cache.put(key, answer, min(answer.ttl, self.max_ttl))
        return answer

    def _account(self, answer: Answer[dns.rdata.Rdata], sent_at: float | None) -> None:
        now = trio.current_time()
        if answer.status is not Status.TIMEOUT:
            self._last_answer = now
            if answer.status is Status.TEMPFAIL:
                self.stats.tempfails += 1
            return
        self.stats.timeouts += 1
        # Silence for the whole wait of a query that was sent: nobody is there.
        if sent_at is not None and self._last_answer < sent_at and now >= self._down_until:
            self._down_until = now + self.down_for
            log.warning("DNS: no answer from %s for %g s; lookups fail at once for %g s",
                        ", ".join(self.nameservers), now - sent_at, self.down_for)

    async def _send(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    lifetime: float) -> Answer[dns.rdata.Rdata]:
        """One resolution through dnspython (tests replace this with a fake)."""
        try:
            result = await self._stub.resolve(qname, rdtype, search=False,
                                              raise_on_no_answer=False, lifetime=lifetime,
                                              backend=self._backend)
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.responses()  # type: ignore[no-untyped-call]
            return Answer(Status.NXDOMAIN, ttl=min(map(_negative_ttl, responses.values()),
                                                   default=0))
        except dns.resolver.LifetimeTimeout:
            return Answer(Status.TIMEOUT, detail=f"no answer within {lifetime:.3g} s")
        except (dns.exception.DNSException, OSError) as exc:
            return Answer(Status.TEMPFAIL, detail=(str(exc) or type(exc).__name__)[:300])
        if result.rrset is None:
            return Answer(Status.NODATA, ttl=_negative_ttl(result.response))
        return Answer(Status.OK, tuple(result.rrset), int(result.chaining_result.minimum_ttl))


def combine_addresses(a: Answer[str], aaaa: Answer[str]) -> Answer[str]:
    """One answer for both address families of a name."""
    records = a.records + aaaa.records
    detail = "; ".join(f"{kind}: {x.status.value} {x.detail}".strip()
                       for kind, x in (("A", a), ("AAAA", aaaa)) if x.unknown)
    if records:
        return Answer(Status.OK, records, min(a.ttl, aaaa.ttl), detail)
    if Status.NXDOMAIN in (a.status, aaaa.status):
        return Answer(Status.NXDOMAIN, ttl=min(a.ttl, aaaa.ttl))
    for failed in (Status.TIMEOUT, Status.TEMPFAIL):
        if failed in (a.status, aaaa.status):
            return Answer(failed, detail=detail)
    return Answer(Status.NODATA, ttl=min(a.ttl, aaaa.ttl))


def _convert(answer: Answer[dns.rdata.Rdata],
             convert: Callable[[dns.rdata.Rdata], U | None]) -> Answer[U]:
    records = tuple(x for x in map(convert, answer.records) if x is not None)
    return Answer(answer.status, records, answer.ttl, answer.detail)


def _host(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


def _address(record: dns.rdata.Rdata) -> str | None:
    if isinstance(record, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return str(ipaddress.ip_address(record.address))
    return None


def _negative_ttl(response: dns.message.Message) -> int:
    """RFC 2308: a negative answer is kept for its SOA's TTL or minimum, whichever is
    less, and not at all without an SOA (section 5)."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and rrset:
            soa = rrset[0]
            if isinstance(soa, dns.rdtypes.ANY.SOA.SOA):
                return min(int(rrset.ttl), int(soa.minimum))
    return 0


def reverse_name(address: str, zone: str | None = None) -> str:
    """The reverse-lookup name of an IP address: ``4.3.2.1.in-addr.arpa``, IPv6 in
    nibbles under ``ip6.arpa``; or under ``zone`` instead, for DNS blocklists
    (RFC 5782: ``4.3.2.1.zen.example``). IPv4-mapped IPv6 addresses count as IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        labels, origin = str(ip).split("."), "in-addr.arpa"
    else:
        labels, origin = list(ip.exploded.replace(":", "")), "ip6.arpa"
    return ".".join(reversed(labels)) + "." + (zone or origin).strip(".")


def parse_nameserver(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` with HOST an IP address; IPv6 as ``[ADDRESS]:PORT`` or bare."""
    host, port = text, "53"
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [IPv6]:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r}: a nameserver is an IP address, optionally "
                         ":PORT") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: bad port {port!r}")
    return address, int(port)
