"""The ``trio-smtpd`` command line: every option, grouped by what it is about."""

from __future__ import annotations

import argparse

from .. import __version__
from ..maildir import MaildirWriter
from .trapoptions import add_trap_options

__all__ = ["DEFAULT_DNS_TIMEOUT", "DEFAULT_VERIFY_TIMEOUT", "MAX_DNS_TIMEOUT",
           "MAX_VERIFY_TIMEOUT", "build_parser"]

DEFAULT_DNS_TIMEOUT = 5.0
DEFAULT_VERIFY_TIMEOUT = 10.0
MAX_VERIFY_TIMEOUT = 60.0
MAX_DNS_TIMEOUT = 60.0  # well below the library's decision timeout (300 s)
#: PostgreSQL's in-row bodies are held in memory while they arrive: as much as the
#: Maildir's write buffer, so a connection costs the same whatever the store.
DEFAULT_BODY_LIMIT = MaildirWriter.BUFFER
DEFAULT_STORE_TIMEOUT = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-smtpd",
        description="A sinkhole SMTP/LMTP server: accepts mail and stores each message "
                    "durably in a Maildir (250 means it is on disk, fsynced). "
                    "'trio-smtpd hash-password' makes password hashes for --auth-file.",
    )
    for add_group in (_listening, _tls, _limits, _policy, _dns, _verify, _store,
                      _operations, _output):
        add_group(parser)
    add_trap_options(parser)
    return parser


def _listening(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("where and how to listen").add_argument
    add("--listen", action="append", metavar="HOST:PORT",
        help="address to listen on (repeatable; default 127.0.0.1:2525; [::1]:25 for IPv6)")
    add("--tls-listen", action="append", default=[], metavar="HOST:PORT",
        help="address for implicit TLS (RFC 8314, port 465 style; repeatable)")
    add("--proxy-listen", action="append", default=[], metavar="HOST:PORT",
        help="address for clients coming through a PROXY-protocol (v1/v2) load balancer "
             "such as HAProxy's send-proxy-v2 (repeatable; needs --proxy-trusted)")
    add("--proxy-trusted", action="append", default=[], metavar="NETWORK",
        help="address or network (CIDR) allowed to send PROXY headers (repeatable)")
    add("--workers", type=int, default=1, metavar="N",
        help="worker processes sharing the listeners; a supervisor restarts any that dies "
             "(default 1: no supervisor)")
    add("--worker-routing", choices=("address", "connection"), default="address",
        help="with --workers: 'address' brings every client address to one worker, so "
             "that per-address limits hold across workers (Linux; the default); "
             "'connection' lets the kernel spread connections, for a few busy clients "
             "such as a local MTA over LMTP (per-address limits are then per worker)")
    add("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP")
    add("--hostname", default=None, metavar="NAME",
        help="name in the greeting and Received headers (default: this host's name)")


def _tls(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("TLS and AUTH").add_argument
    add("--tls-cert", metavar="FILE", help="PEM certificate chain; enables STARTTLS")
    add("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    add("--tls-sni", action="append", default=[], metavar="NAME=CERT:KEY",
        help="another certificate, for clients that ask for NAME by SNI (a host name or "
             "*.domain; repeatable); others get --tls-cert")
    add("--tls-fallback", default=None, metavar="FAILURES:HOURS",
        help="stop offering STARTTLS to an address after FAILURES failed handshakes "
             "within HOURS, so broken TLS clients can still deliver (e.g. 3:24)")
    add("--auth-file", metavar="FILE",
        help="enables AUTH PLAIN/LOGIN (only over TLS): lines of user:hash, each hash made "
             "by 'trio-smtpd hash-password'")
    add("--auth-delay", type=float, default=1.0, metavar="SECONDS",
        help="wait this long before answering a failed AUTH, doubled for each recent "
             "failure from the same address, up to 30 s (default 1)")
    add("--max-auth-failures", default="10/hour", metavar="N/UNIT",
        help="failed AUTH attempts allowed per client address per second, minute or hour; "
             "past it AUTH is answered 454 without checking (default 10/hour)")


def _limits(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("limits and timeouts").add_argument
    add("--max-message-size", type=int, default=32 * 2**20, metavar="BYTES",
        help="largest message accepted, advertised as SIZE (default 33554432)")
    add("--max-recipients", type=int, default=100, metavar="N",
        help="recipients per transaction; more get 452 (default 100, RFC 5321)")
    add("--timeout", type=float, default=300.0, metavar="SECONDS",
        help="time allowed for each command line before 421 (default 300, RFC 5321)")
    add("--data-timeout", type=float, default=180.0, metavar="SECONDS",
        help="time allowed for each line, or 1000 octets, of message data (DATA or "
             "BDAT), from its first byte, before 421 (default 180, RFC 5321)")
    add("--tls-timeout", type=float, default=60.0, metavar="SECONDS",
        help="time allowed for a TLS handshake, implicit or after STARTTLS (default 60)")
    add("--write-timeout", type=float, default=300.0, metavar="SECONDS",
        help="time allowed to a client that does not read our replies (default 300)")
    add("--shutdown-grace", type=float, default=30.0, metavar="SECONDS",
        help="on SIGTERM, time given to transactions in progress to finish (default 30)")
    add("--max-connections", type=int, default=1000, metavar="N",
        help="concurrent connections, shared among --workers; more are answered 421 "
             "(default 1000)")
    add("--max-connections-per-ip", type=int, default=50, metavar="N",
        help="concurrent connections from one address; more are answered 421 (default 50, "
             "as Postfix's anvil)")
    add("--max-connection-rate", default=None, metavar="N/UNIT",
        help="new connections one address may open per second, minute or hour (N alone: "
             "per minute); more are answered 421 (default: no limit)")
    add("--tarpit", type=float, default=0.0, metavar="SECONDS",
        help="wait this long before each batch of replies to every client (default 0)")


def _policy(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("what to do with mail").add_argument
    add("--rules", action="append", metavar="FILE",
        help="policy rules (TOML; see docs/sinkhole.md): the first matching rule of each "
             "phase decides; repeatable, earlier files first; SIGHUP reloads them, keeping "
             "the old ones if a file is bad")
    add("--save-then-reject", action="store_true",
        help="store and log each message, then refuse it with 554 naming its file, so the "
             "sender believes delivery failed (sinksmtp's -M)")
    add("--discard", action="store_true",
        help="accept and log every message but store nothing (the pure sinkhole)")
    printing = parser.add_mutually_exclusive_group()
    printing.add_argument(
        "--print", dest="print_style", action="store_const", const="readable",
        help="write each message to standard output readably: envelope, decoded headers "
             "and text parts, attachments listed (a mail catcher for development)")
    printing.add_argument(
        "--print-raw", dest="print_style", action="store_const", const="raw",
        help="write each message's bytes to standard output, as received")
    add("--maildir", default=None, metavar="DIR",
        help="Maildir to store messages in, created if missing (default ./maildir; "
             "none with --print or --print-raw unless given)")


def _dns(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("DNS facts about clients").add_argument
    add("--dns-server", action="append", default=[], metavar="HOST[:PORT]",
        help="nameserver for DNS facts about clients (an IP address; [IPv6]:PORT; "
             "repeatable; default: those of /etc/resolv.conf)")
    add("--dns-timeout", type=float, default=None, metavar="SECONDS",
        help="how long a DNS fact may take before it counts as unknown "
             f"(default {DEFAULT_DNS_TIMEOUT:g}, at most {MAX_DNS_TIMEOUT:g})")
    add("--no-dns", action="store_true",
        help="no DNS lookups at all: no reverse DNS in logs and headers, and rules may "
             "not use DNS facts")


def _verify(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("message authentication (SPF, DKIM, ARC, DMARC)"
                                    ).add_argument
    add("--verify", default=None, metavar="KINDS",
        help="which checks each message gets, comma-separated from spf,dkim,arc,dmarc "
             "(default: all four, whenever DNS is on); dmarc needs spf and dkim")
    add("--no-verify", action="store_true",
        help="check nothing: no Authentication-Results header, no spf/dkim/arc/dmarc "
             "rules")
    add("--verify-timeout", type=float, default=None, metavar="SECONDS",
        help="how long each check may take before it is temperror "
             f"(default {DEFAULT_VERIFY_TIMEOUT:g}, at most {MAX_VERIFY_TIMEOUT:g})")


def _store(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("where messages and their records go").add_argument
    add("--store", default=None, metavar="STORE",
        help="sqlite (the default: the Maildir, and a row per message in "
             "MAILDIR/index.sqlite3), maildir (files and sidecars only), or "
             "postgresql://USER@HOST/DB (one database for a fleet, not with --save-hash; "
             "see docs/sinkhole.md)")
    add("--store-body-limit", type=int, default=DEFAULT_BODY_LIMIT, metavar="BYTES",
        help="PostgreSQL: messages up to this size are kept in the database, larger ones "
             f"in the Maildir, named by their row (default {DEFAULT_BODY_LIMIT}; 0: none)")
    add("--store-timeout", type=float, default=DEFAULT_STORE_TIMEOUT, metavar="SECONDS",
        help="PostgreSQL: the longest wait for a connection or a statement before the "
             f"client gets 451 (default {DEFAULT_STORE_TIMEOUT:g})")
    add("--store-connections", type=int, default=4, metavar="N",
        help="PostgreSQL: connections per process (default 4)")


def _operations(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("running in production (docs/operations.md)").add_argument
    add("--metrics-listen", default=None, metavar="HOST:PORT",
        help="serve Prometheus metrics at /metrics and a health check at /healthz "
             "(needs prometheus-client: pip install 'trio-smtpd[metrics]')")
    add("--user", default=None, metavar="NAME",
        help="bind the listeners as root, then run as this user (the Maildir becomes "
             "theirs); running on as root is refused unless this is 'root'")
    add("--group", default=None, metavar="NAME",
        help="with --user: this group instead of the user's groups")
    add("--check", action="store_true",
        help="check every option and file (certificates, auth file, rules), say what "
             "would be listened on, and exit: 0 if all is well, 2 if not; binds nothing")


def _output(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("output").add_argument
    add("--log-format", choices=("text", "json"), default="text",
        help="one line per connection event and per transaction: text or JSON lines")
    add("--version", action="version", version=f"trio-smtpd {__version__}")
