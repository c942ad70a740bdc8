"""The DNS facts of one connection: each looked up at most once, in the background.

A :class:`ClientLookups` lives as long as its session. Lookups start as soon as what
they need is known (at connect: the client's reverse DNS and its DNSBL listings; at
HELO, MAIL and RCPT: the names those commands give), run concurrently in the session's
nursery, and each ends by its deadline (``--dns-timeout`` after it started; a lookup
that depends on another shares that one's deadline), leaving a value that says
"unknown" if the DNS did not answer in time. A decision waits only for the keys it names
(:meth:`wait`), so a reply never waits for a fact nobody asked about.

With DNS off (``resolver=None``) every fact is "unknown" at once, so rules that would
need one can never wait forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from ..dns import Resolver
from ..verify import check_spf
from .checks import listing, mail_domain, reverse_dns
from .dnsfacts import (
    RDNS,
    Key,
    Listing,
    ReverseDNS,
    Wants,
    dbl_key,
    dbl_name,
    dnsbl_key,
    domain_key,
    lookup_domain,
    unknown_fact,
)

__all__ = ["ClientLookups"]

_GRACE = 0.25
#: Facts per connection: a client cycling through RSET and new domains cannot make us
#: look up without end (each fact is itself a bounded number of queries).
MAX_FACTS = 100


class ClientLookups:
    def __init__(self, resolver: Resolver | None, nursery: trio.Nursery | None,
                 client: str | None, *, timeout: float,
                 on_listing: Callable[[Listing], None] | None = None) -> None:
        self.client = client
        #: The facts found so far (key -> value); rules read this.
        self.values: dict[Key, object] = {}
        self._resolver = resolver
        self._nursery = nursery
        self._timeout = timeout
        self._on_listing = on_listing
        self._done: dict[Key, trio.Event] = {}
        self._deadlines: dict[Key, float] = {}

    @property
    def enabled(self) -> bool:
        return self._resolver is not None and self._nursery is not None

    def start(self, key: Key, deadline: float | None = None) -> trio.Event:
        """Look ``key`` up unless that has begun already; set when its value is known."""
        done = self._done.get(key)
        if done is not None:
            return done
        done = self._done[key] = trio.Event()
        if self._resolver is None or self._nursery is None or len(self._done) > MAX_FACTS:
            why = ("DNS lookups are off" if self._resolver is None or self._nursery is None
                   else f"more than {MAX_FACTS} DNS facts for one connection")
            self.values[key] = unknown_fact(key, self.client, why)
            done.set()
            return done
        deadline = trio.current_time() + self._timeout if deadline is None else deadline
        self._deadlines[key] = deadline
        self._nursery.start_soon(self._run, self._resolver, key, deadline, done)
        return done

    async def wait(self, keys: Iterable[Key]) -> None:
        for event in [self.start(key) for key in keys]:
            await event.wait()

    async def settle(self) -> None:
        """Wait for every lookup begun so far (each ends by its deadline)."""
        while pending := [done for done in self._done.values() if not done.is_set()]:
            for done in pending:
                await done.wait()

    def spawn(self, function: Callable[[], Awaitable[None]]) -> None:
        """Run something in the background for as long as the session (logging)."""
        assert self._nursery is not None
        self._nursery.start_soon(function)

    def prefetch(self, wants: Wants, *, helo: str | None = None,
                 sender: str | None = None, recipient: str | None = None) -> None:
        """Start every lookup that the rules may need and what is known now allows."""
        if RDNS not in self._done:  # the connection's own facts, once
            self.start(RDNS)  # always: the Received header and the connect log use it
            for zone in wants.dnsbl:
                self.start(dnsbl_key(zone))
            if wants.dbl_host and self.enabled:
                self.spawn(lambda: self._host_listings(wants.dbl_host))
        name = dbl_name(helo)
        if name:
            for zone in wants.dbl_helo:
                self.start(dbl_key(name, zone))
        sender_domain = lookup_domain(sender)
        if sender_domain:
            if wants.sender_domain:
                self.start(domain_key(sender_domain))
            for zone in wants.dbl_sender:
                self.start(dbl_key(sender_domain, zone))
        recipient_domain = lookup_domain(recipient)
        if recipient_domain and wants.recipient_domain:
            self.start(domain_key(recipient_domain))

    async def connect_facts(self, wants: Wants) -> None:
        """Wait for what the connect log line reports: rDNS and the client's listings."""
        await self.wait([RDNS, *(dnsbl_key(zone) for zone in wants.dnsbl)])
        await self.wait(self.host_listing_keys(wants.dbl_host))

    def host_listing_keys(self, zones: Iterable[str]) -> list[Key]:
        """DBL keys of every PTR name (verified or not, as sinksmtp has it)."""
        rdns = self.values.get(RDNS)
        if not isinstance(rdns, ReverseDNS):
            return []
        return [dbl_key(name, zone) for name in rdns.names if dbl_name(name)
                for zone in zones]

    def listings(self) -> list[Listing]:
        return [v for v in self.values.values() if isinstance(v, Listing) and v.listed]

    def client_listings(self, wants: Wants) -> list[Listing]:
        """The listings of the client itself (its address, its host names): what the
        connect line reports, whatever else (a sender's domain) was found meanwhile."""
        keys = [*(dnsbl_key(zone) for zone in wants.dnsbl),
                *self.host_listing_keys(wants.dbl_host)]
        found = (self.values.get(key) for key in keys)
        return [v for v in found if isinstance(v, Listing) and v.listed]

    async def confirmed_name(self) -> str | None:
        """The client's forward-confirmed name (waiting for it if need be), for the
        Received header; None with DNS off or without one."""
        if not self.enabled:
            return None
        await self.wait([RDNS])
        rdns = self.values[RDNS]
        return rdns.confirmed if isinstance(rdns, ReverseDNS) else None

    def summary(self) -> dict[str, Any] | None:
        """What the metadata sidecar records: rDNS, the FCrDNS verdict, listings."""
        if not self.enabled:
            return None
        rdns = self.values.get(RDNS)
        if not isinstance(rdns, ReverseDNS):
            return None
        return {"rdns": list(rdns.names), "fcrdns": rdns.verdict,
                "confirmed": rdns.confirmed,
                "listings": [{"list": x.zone, "kind": x.kind, "subject": x.subject,
                              "codes": list(x.codes), "reason": x.reason}
                             for x in self.listings()]}

    async def _host_listings(self, zones: frozenset[str]) -> None:
        await self.start(RDNS).wait()
        for key in self.host_listing_keys(zones):
            self.start(key, self._deadlines.get(RDNS))

    async def _run(self, resolver: Resolver, key: Key, deadline: float,
                   done: trio.Event) -> None:
        value: object = None
        try:
            # Every lookup inside ends by the deadline on its own, keeping what it had
            # (the PTR names of a name whose forward lookup timed out, say); this is the
            # backstop, a little later so as not to cut those short.
            with trio.move_on_at(deadline + _GRACE):
                value = await self._look_up(resolver, key, deadline)
        finally:
            if value is None:
                value = unknown_fact(key, self.client, "no answer by the deadline")
            self.values[key] = value
            done.set()
        if isinstance(value, Listing) and value.listed and self._on_listing is not None:
            self._on_listing(value)

    async def _look_up(self, resolver: Resolver, key: Key, deadline: float) -> object:
        kind, client = key[0], self.client
        if kind == "rdns":
            return ReverseDNS() if client is None else await reverse_dns(resolver, client,
                                                                         deadline)
        if kind == "dnsbl":
            if client is None:
                return Listing("dnsbl", key[1], "", False)
            return await listing(resolver, "dnsbl", client, key[1], deadline)
        if kind == "dbl":
            return await listing(resolver, "dbl", key[1], key[2], deadline)
        if kind == "domain":
            return await mail_domain(resolver, key[1], deadline)
        if kind == "spf":
            return await check_spf(resolver, client or "", key[1], key[2], deadline=deadline)
        raise ValueError(f"unknown fact {key!r}")
