"""A resolver whose network is a table: answers after a delay, or never (HANG)."""

from __future__ import annotations

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import trio

from trio_smtpd.dns import Answer, Resolver, Status

HANG = Answer[dns.rdata.Rdata](Status.OK, detail="never sent: the fake hangs")
NXDOMAIN = Answer[dns.rdata.Rdata](Status.NXDOMAIN)


def records(rdtype: str, *texts: str, ttl: int = 300) -> Answer[dns.rdata.Rdata]:
    return Answer(Status.OK, tuple(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)
                                   for text in texts), ttl)


def a(*addresses: str, ttl: int = 300) -> Answer[dns.rdata.Rdata]:
    return records("A", *addresses, ttl=ttl)


class FakeResolver(Resolver):
    """The real resolver with its network replaced: answers from a table, after a delay."""

    def __init__(self, answers: dict[str, Answer[dns.rdata.Rdata]] | None = None,
                 delays: dict[str, float] | None = None, *,
                 default: Answer[dns.rdata.Rdata] = NXDOMAIN,
                 **options: float) -> None:
        super().__init__(["127.0.0.1:9"], **options)  # (never sent to)
        self.answers = answers or {}
        self.default = default
        self.delays = delays or {}
        self.sent: list[str] = []
        self.in_flight = self.most_in_flight = 0

    async def _send(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                    lifetime: float) -> Answer[dns.rdata.Rdata]:
        key = f"{qname.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(rdtype)}"
        self.sent.append(key)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            answer = self.answers.get(key, self.default)
            if answer is HANG:
                await trio.sleep_forever()
            await trio.sleep(self.delays.get(key, 0))
            return answer
        finally:
            self.in_flight -= 1
