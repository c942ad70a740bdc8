"""Real DNS servers for the tests: unbound on 127.0.0.1 serving the zone below, and a
"silent" server that reads queries and never answers (for timeouts).

unbound answers only from its own data (``local-zone: "." static``) and never recurses:
nothing leaves this machine. Its query log (``log-queries``) lets tests count the
queries a connection cost, at the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

SOA = "3600 SOA ns.test. hostmaster.test. 1 3600 900 86400 300"

#: Client addresses (connect from them: Linux routes all of 127.0.0.0/8 to loopback).
GOOD = "127.0.0.1"  # PTR good.test, which has A 127.0.0.1: forward-confirmed
NOFORWARD = "127.0.0.2"  # PTR ghost.test, which has no address
INCONSISTENT = "127.0.0.3"  # PTR liar.test, whose address is another
EXISTS = "127.0.0.4"  # PTR mixed.test (confirmed) and ghost.test (not): exists, not good
NODNS = "127.0.0.5"  # no PTR record
PTR_REFUSED = "127.0.0.6"  # the PTR zone refuses queries: unknown
LISTED = "127.0.0.7"  # in zen.test, with a TXT reason
DYNAMIC = "127.0.0.8"  # PTR h8.dyn.test, confirmed, whose name is in dbl.test
LISTED_V6 = "2001:db8::7"  # in zen.test by its nibbles (a PROXY-protocol client)

ZEN_REASON = "Listed for spam trap hits, see zen.test/7"
ZEN_V6_REASON = "IPv6 listing for 2001:db8::7"
DBL_REASONS = {"h8.dyn.test": "dynamic pool name", "spammy.test": "spammy domain"}

_V6_NIBBLES = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
ZONE = [
    f"test. {SOA}",
    f"127.in-addr.arpa. {SOA}",
    "1.0.0.127.in-addr.arpa. 300 PTR good.test.",
    "good.test. 300 A 127.0.0.1",
    "good.test. 300 MX 10 mx.good.test.",
    "mx.good.test. 300 A 11.0.0.1",
    "2.0.0.127.in-addr.arpa. 300 PTR ghost.test.",
    "3.0.0.127.in-addr.arpa. 300 PTR liar.test.",
    "liar.test. 300 A 127.0.0.99",
    "4.0.0.127.in-addr.arpa. 300 PTR mixed.test.",
    "4.0.0.127.in-addr.arpa. 300 PTR ghost.test.",
    "mixed.test. 300 A 127.0.0.4",
    "8.0.0.127.in-addr.arpa. 300 PTR h8.dyn.test.",
    "h8.dyn.test. 300 A 127.0.0.8",
    # DNSBL zen.test (RFC 5782): IPv4 reversed, IPv6 in nibbles.
    "7.0.0.127.zen.test. 300 A 127.0.0.2",
    f'7.0.0.127.zen.test. 300 TXT "{ZEN_REASON}"',
    f"{_V6_NIBBLES}.zen.test. 300 A 127.0.0.4",
    f'{_V6_NIBBLES}.zen.test. 300 TXT "{ZEN_V6_REASON}"',
    # DBL dbl.test: names.
    "h8.dyn.test.dbl.test. 300 A 127.0.1.2",
    f'h8.dyn.test.dbl.test. 300 TXT "{DBL_REASONS["h8.dyn.test"]}"',
    "spammy.test.dbl.test. 300 A 127.0.1.2",
    f'spammy.test.dbl.test. 300 TXT "{DBL_REASONS["spammy.test"]}"',
    # Mail domains.
    "spammy.test. 300 MX 10 mx.good.test.",
    "amx.test. 300 A 11.0.0.2",  # no MX: the domain's own address (RFC 5321 5.1)
    "nullmx.test. 300 MX 0 .",  # RFC 7505
    "lhmx.test. 300 MX 10 localhost.",
    "private.test. 300 MX 10 mx.private.test.",
    "mx.private.test. 300 A 10.1.2.3",  # (a record's value: nothing is sent there)
    "v6only.test. 300 AAAA 2001:db8::10",
    # A good MX beside one saying "no mail here": the latter wins (as sinksmtp has it).
    "mixedmx.test. 300 MX 10 mx.good.test.",
    "mixedmx.test. 300 MX 20 localhost.",
    "mixednull.test. 300 MX 10 mx.good.test.",
    "mixednull.test. 300 MX 0 .",  # which RFC 7505 forbids beside other MX records
]
REFUSED_ZONES = ["refused.test.", "6.0.0.127.in-addr.arpa."]

#: SPF and DMARC policies for the message-authentication tests (their DKIM keys are
#: made by opendkim-genkey when the tests start: see ``dkim_records``). Clients connect
#: from 127.0.0.1 (GOOD) unless a test says otherwise.
AUTH_ZONE = [
    # pass, through an include and an mx mechanism naming another domain
    'spf-pass.test. 300 TXT "v=spf1 include:_spf.spf-pass.test -all"',
    '_spf.spf-pass.test. 300 TXT "v=spf1 mx:spf-pass.test -all"',
    "spf-pass.test. 300 MX 10 mx.spf-pass.test.",
    "mx.spf-pass.test. 300 A 127.0.0.1",
    'spf-fail.test. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'spf-softfail.test. 300 TXT "v=spf1 ip4:192.0.2.0/24 ~all"',
    'spf-neutral.test. 300 TXT "v=spf1 ip4:192.0.2.0/24 ?all"',
    # (good.test has no TXT record: none)
    # permerror: eleven DNS mechanisms (RFC 7208 4.6.4), three void lookups, bad syntax
    'spf-lookups.test. 300 TXT "v=spf1 ' + " ".join(f"a:h{n}.good.test" for n in range(11))
    + ' -all"',
    *(f"h{n}.good.test. 300 A 192.0.2.{n + 1}" for n in range(11)),
    'spf-void.test. 300 TXT "v=spf1 a:v1.nosuch.test a:v2.nosuch.test a:v3.nosuch.test '
    '-all"',
    'spf-syntax.test. 300 TXT "v=spf1 ip4:999.1.1.1 -all"',
    # temperror: the include's zone refuses queries
    'spf-temp.test. 300 TXT "v=spf1 include:refused.test -all"',
    # macros (RFC 7208 7): a pass only for alice, from 127.0.0.1
    'spf-macro.test. 300 TXT "v=spf1 exists:%{ir}.%{l}._spf.%{d} -all"',
    "1.0.0.127.alice._spf.spf-macro.test. 300 A 127.0.0.2",
    # DMARC: reject; relaxed (the default) and strict alignment; SPF-aligned quarantine
    '_dmarc.dmarc-reject.test. 300 TXT "v=DMARC1; p=reject"',
    '_dmarc.relaxed.test. 300 TXT "v=DMARC1; p=reject; adkim=r"',
    '_dmarc.strict.test. 300 TXT "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s"',
    '_dmarc.spf-pass.test. 300 TXT "v=DMARC1; p=quarantine"',
    # SPF passes for a subdomain of relaxed.test and strict.test, and for strict.test
    'bounce.relaxed.test. 300 TXT "v=spf1 ip4:127.0.0.1 -all"',
    'bounce.strict.test. 300 TXT "v=spf1 ip4:127.0.0.1 -all"',
    'strict.test. 300 TXT "v=spf1 ip4:127.0.0.1 -all"',
]
#: The domains whose DKIM key (selector "sel") the tests publish.
DKIM_DOMAINS = ["dkim.test", "relaxed.test", "strict.test", "arc.test", "dmarc-reject.test"]


def dkim_records(genkey_txt: str, selector: str = "sel") -> list[str]:
    """The key record of ``opendkim-genkey``'s .txt output, at ``selector`` of each of
    DKIM_DOMAINS, as unbound local-data."""
    strings = " ".join(f'"{s}"' for s in re.findall(r'"([^"]*)"', genkey_txt))
    return [f"{selector}._domainkey.{domain}. 300 TXT {strings}" for domain in DKIM_DOMAINS]


@dataclass
class SilentServer:
    """A UDP socket on loopback that counts the queries it gets and never answers."""

    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET,
                                                                      socket.SOCK_DGRAM))
    received: int = 0
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _count(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()


@dataclass
class Unbound:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self, since: int = 0) -> list[tuple[str, str]]:
        """(name, type) of each query the server got, from log line ``since`` on."""
        lines = self.log_path.read_text().splitlines()[since:]
        return [(m.group(1), m.group(2)) for m in map(_QUERY.search, lines) if m]

    def mark(self) -> int:
        return len(self.log_path.read_text().splitlines())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


_QUERY = re.compile(r"info: 127\.0\.0\.1 (\S+)\. (\S+) IN$")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port: int = udp.getsockname()[1]
    return port


def _config(port: int, directory: Path, slow_to: str | None,
            extra: Sequence[str] = ()) -> str:
    lines = [
        "server:", f"  interface: 127.0.0.1@{port}", "  do-ip6: no", '  username: ""',
        '  chroot: ""', f'  directory: "{directory}"', '  pidfile: ""',
        "  use-syslog: no", '  logfile: ""', "  log-queries: yes", "  verbosity: 1",
        "  do-daemonize: no", "  num-threads: 1", '  module-config: "iterator"',
        "  access-control: 127.0.0.0/8 allow", "  outgoing-interface: 127.0.0.1",
        "  do-not-query-localhost: no",
        # Nothing beyond this server's own data: it never asks the Internet.
        '  local-zone: "." static', '  local-zone: "test." static',
        '  local-zone: "127.in-addr.arpa." static',
        *(f'  local-zone: "{zone}" refuse' for zone in REFUSED_ZONES),
        *(f"  local-data: '{record}'" for record in [*ZONE, *extra]),
    ]
    if slow_to is not None:  # slow.test is forwarded to a server that never answers
        host, port_ = slow_to.split(":")
        lines += ['  local-zone: "slow.test." transparent', "forward-zone:",
                  '  name: "slow.test."', f"  forward-addr: {host}@{port_}"]
    return "\n".join(lines) + "\n"


def start_unbound(program: str, directory: Path, slow_to: str | None = None,
                  extra: Sequence[str] = ()) -> Unbound:
    """unbound serving ZONE, and ``extra`` records too."""
    directory.mkdir(parents=True, exist_ok=True)
    for _attempt in range(5):  # the port may be taken between choosing and binding it
        port = _free_port()
        config = directory / "unbound.conf"
        config.write_text(_config(port, directory, slow_to, extra))
        log_path = directory / f"unbound-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([program, "-d", "-c", str(config)], stdout=log,
                                       stderr=subprocess.STDOUT,
                                       preexec_fn=_die_with_parent)
        server = Unbound(process, port, log_path)
        if _answers(server):
            return server
        server.stop()
    raise AssertionError(f"unbound did not start: {log_path.read_text()}")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the test process dies without its teardown."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _answers(server: Unbound, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    query = dns.message.make_query("good.test.", dns.rdatatype.A)
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            dns.query.udp(query, "127.0.0.1", port=server.port, timeout=0.2)
            return True
        except (OSError, dns.exception.Timeout):
            time.sleep(0.05)
    return False
