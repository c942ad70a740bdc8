"""``trio-smtpd``: the sinkhole SMTP/LMTP server (and ``trio-smtpd hash-password``).

Configuration errors are one line on stderr and exit status 2. SIGTERM or SIGINT shuts
down gracefully (in-flight transactions get the grace period); a second one exits at once.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import math
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

import trio

from .. import (
    Config,
    Credentials,
    PlainCredentials,
    ProxyProtocolListener,
    Server,
    Timeouts,
    __version__,
    serve,
)
from ..dns import Resolver, parse_nameserver
from ..maildir import Maildir
from .delivery import SinkholeHandler
from .logs import configure_logging, log_event
from .passwords import AuthFileError, hash_password, load_auth_file, verify_password
from .printing import Printer
from .rules import RulesError, RuleSet, load_rules
from .sockets import REUSEPORT, BoundSocket, Kind, bind, from_environment
from .tlsfallback import TLSFallback, parse_fallback
from .workers import supervise

__all__ = ["main"]

EXIT_CONFIG = 2
DEFAULT_DNS_TIMEOUT = 5.0
MAX_DNS_TIMEOUT = 60.0  # well below the library's decision timeout (300 s)


class ConfigError(Exception):
    """A problem with the command line or the files it names."""


def parse_address(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{option} {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{option} {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-smtpd",
        description="A sinkhole SMTP/LMTP server: accepts mail and stores each message "
                    "durably in a Maildir (250 means it is on disk, fsynced). "
                    "'trio-smtpd hash-password' makes password hashes for --auth-file.",
    )
    add = parser.add_argument
    add("--listen", action="append", metavar="HOST:PORT",
        help="address to listen on (repeatable; default 127.0.0.1:2525; [::1]:25 for IPv6)")
    add("--maildir", default=None, metavar="DIR",
        help="Maildir to store messages in, created if missing (default ./maildir; "
             "none with --print or --print-raw unless given)")
    add("--hostname", default=None, metavar="NAME",
        help="name in the greeting and Received headers (default: this host's name)")
    add("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP")
    add("--tls-cert", metavar="FILE", help="PEM certificate chain; enables STARTTLS")
    add("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    add("--tls-sni", action="append", default=[], metavar="NAME=CERT:KEY",
        help="another certificate, for clients that ask for NAME by SNI (a host name or "
             "*.domain; repeatable); others get --tls-cert")
    add("--tls-listen", action="append", default=[], metavar="HOST:PORT",
        help="address for implicit TLS (RFC 8314, port 465 style; repeatable)")
    add("--auth-file", metavar="FILE",
        help="enables AUTH PLAIN/LOGIN (only over TLS): lines of user:hash, each hash made "
             "by 'trio-smtpd hash-password'")
    add("--max-message-size", type=int, default=32 * 2**20, metavar="BYTES",
        help="largest message accepted, advertised as SIZE (default 33554432)")
    add("--max-recipients", type=int, default=100, metavar="N",
        help="recipients per transaction; more get 452 (default 100, RFC 5321)")
    add("--timeout", type=float, default=300.0, metavar="SECONDS",
        help="idle time allowed between commands before 421 (default 300, RFC 5321)")
    add("--max-connections", type=int, default=1000, metavar="N",
        help="concurrent connections; more are answered 421 (default 1000)")
    add("--proxy-listen", action="append", default=[], metavar="HOST:PORT",
        help="address for clients coming through a PROXY-protocol (v1/v2) load balancer "
             "such as HAProxy's send-proxy-v2 (repeatable; needs --proxy-trusted)")
    add("--proxy-trusted", action="append", default=[], metavar="NETWORK",
        help="address or network (CIDR) allowed to send PROXY headers (repeatable)")
    add("--workers", type=int, default=1, metavar="N",
        help="worker processes sharing the listeners; a supervisor restarts any that dies "
             "(default 1: no supervisor)")
    add("--tarpit", type=float, default=0.0, metavar="SECONDS",
        help="wait this long before each batch of replies to every client (default 0)")
    add("--tls-fallback", default=None, metavar="FAILURES:HOURS",
        help="stop offering STARTTLS to an address after FAILURES failed handshakes "
             "within HOURS, so broken TLS clients can still deliver (e.g. 3:24)")
    add("--rules", metavar="FILE",
        help="policy rules (TOML; see docs/sinkhole.md): the first matching rule of each "
             "phase decides; SIGHUP reloads them, keeping the old ones if the file is bad")
    add("--dns-server", action="append", default=[], metavar="HOST[:PORT]",
        help="nameserver for DNS facts about clients (an IP address; [IPv6]:PORT; "
             "repeatable; default: those of /etc/resolv.conf)")
    add("--dns-timeout", type=float, default=None, metavar="SECONDS",
        help="how long a DNS fact may take before it counts as unknown "
             f"(default {DEFAULT_DNS_TIMEOUT:g}, at most {MAX_DNS_TIMEOUT:g})")
    add("--no-dns", action="store_true",
        help="no DNS lookups at all: no reverse DNS in logs and headers, and rules may "
             "not use DNS facts")
    add("--save-then-reject", action="store_true",
        help="store and log each message, then refuse it with 554 naming its file, so the "
             "sender believes delivery failed (sinksmtp's -M)")
    add("--discard", action="store_true",
        help="accept and log every message but store nothing (the pure sinkhole)")
    add_print_options(parser)
    add("--log-format", choices=("text", "json"), default="text",
        help="one line per connection event and per transaction: text or JSON lines")
    add("--version", action="version", version=f"trio-smtpd {__version__}")
    return parser


def hash_password_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trio-smtpd hash-password",
        description="Print a password hash for --auth-file. The password is read from "
                    "standard input (first line) or asked for on the terminal.")
    parser.parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("trio-smtpd: passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("trio-smtpd: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def build_config(args: argparse.Namespace) -> tuple[Config, Maildir | None]:
    if args.max_message_size < 1 or args.max_recipients < 1 or args.max_connections < 1:
        raise ConfigError("--max-message-size, --max-recipients and --max-connections "
                          "must be positive")
    if args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    if args.tarpit < 0:
        raise ConfigError("--tarpit must not be negative")
    check_dns_options(args)
    if args.tls_fallback:
        try:
            parse_fallback(args.tls_fallback)
        except ValueError as exc:
            raise ConfigError(f"--tls-fallback: {exc}") from None
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load TLS certificate/key: {exc}") from None
    if args.tls_listen and tls is None:
        raise ConfigError("--tls-listen needs --tls-cert and --tls-key")
    if args.tls_sni:
        if tls is None:
            raise ConfigError("--tls-sni needs --tls-cert and --tls-key (the default)")
        install_sni(tls, [parse_sni(text) for text in args.tls_sni])
    authenticator = None
    if args.auth_file:
        try:
            users = load_auth_file(args.auth_file)
        except AuthFileError as exc:
            raise ConfigError(str(exc)) from None
        authenticator = partial(_authenticate, users)
    maildir = None
    if not args.discard and args.maildir is not None:
        maildir = Maildir(args.maildir)
        try:
            maildir.create()
        except OSError as exc:
            raise ConfigError(f"cannot use maildir {args.maildir}: {exc}") from None
    config = Config(
        hostname=args.hostname or socket.gethostname(),
        lmtp=args.lmtp,
        tls=tls,
        authenticator=authenticator,
        max_message_size=args.max_message_size,
        max_recipients=args.max_recipients,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections,
        timeouts=Timeouts(command=args.timeout),
    )
    return config, maildir


def add_print_options(parser: argparse.ArgumentParser) -> None:
    printing = parser.add_mutually_exclusive_group()
    add = printing.add_argument
    add("--print", dest="print_style", action="store_const", const="readable",
        help="write each message to standard output readably: envelope, decoded headers "
             "and text parts, attachments listed (a mail catcher for development)")
    add("--print-raw", dest="print_style", action="store_const", const="raw",
        help="write each message's bytes to standard output, as received")


def check_print_options(args: argparse.Namespace) -> None:
    """--print and --print-raw store nothing unless --maildir is given; without them,
    messages go to ./maildir by default."""
    if args.print_style and args.workers > 1:
        # Whole messages from several processes would interleave on one output.
        raise ConfigError("--print and --print-raw need a single process (--workers 1)")
    if args.maildir is None and not args.print_style:
        args.maildir = "./maildir"


def check_dns_options(args: argparse.Namespace) -> None:
    if args.no_dns and (args.dns_server or args.dns_timeout is not None):
        raise ConfigError("--no-dns and --dns-server/--dns-timeout contradict each other")
    timeout = args.dns_timeout
    if timeout is not None and not (math.isfinite(timeout)
                                    and 0 < timeout <= MAX_DNS_TIMEOUT):
        raise ConfigError(f"--dns-timeout must be more than 0 and at most "
                          f"{MAX_DNS_TIMEOUT:g} seconds")
    for text in args.dns_server:
        try:
            parse_nameserver(text)
        except ValueError as exc:
            raise ConfigError(f"--dns-server {exc}") from None


def make_resolver(args: argparse.Namespace) -> Resolver | None:
    """The one resolver of this process (None with --no-dns)."""
    if args.no_dns:
        return None
    resolver = Resolver(args.dns_server or None,
                        timeout=args.dns_timeout or DEFAULT_DNS_TIMEOUT)
    if resolver.configuration_error:
        log_event("dns", warning=resolver.configuration_error,
                  effect="every DNS fact is unknown")
    return resolver


def parse_sni(text: str) -> tuple[str, ssl.SSLContext]:
    """``NAME=CERT:KEY`` -> (lower-case name, a context holding that certificate)."""
    name, sep, files = text.partition("=")
    cert, colon, key = files.rpartition(":")
    if not sep or not colon or not name or not cert or not key:
        raise ConfigError(f"--tls-sni {text!r}: expected NAME=CERT:KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-sni {name}: cannot load certificate/key: {exc}") from None
    return name.lower(), context


def install_sni(default: ssl.SSLContext, certificates: list[tuple[str, ssl.SSLContext]]
                ) -> None:
    """Serve each name's certificate to clients asking for it; others get the default."""
    exact = {name: ctx for name, ctx in certificates if not name.startswith("*.")}
    wildcard = {name[1:]: ctx for name, ctx in certificates if name.startswith("*.")}

    def choose(ssl_object: ssl.SSLObject, server_name: str,
               context: ssl.SSLContext) -> None:
        if not server_name:
            return
        name = server_name.lower()
        chosen = exact.get(name) or wildcard.get(name[name.find("."):] if "." in name else "")
        if chosen is not None:
            ssl_object.context = chosen

    default.sni_callback = choose


async def _authenticate(users: dict[str, str], credentials: Credentials) -> str | None:
    if not isinstance(credentials, PlainCredentials):
        return None
    encoded = users.get(credentials.username)
    if encoded is None:
        return None
    # scrypt is deliberately slow: keep it off the event loop.
    ok = await trio.to_thread.run_sync(verify_password, credentials.password, encoded)
    return credentials.username if ok else None


def bind_listeners(args: argparse.Namespace, *, reserve_only: bool = False) -> list[BoundSocket]:
    """Bind every listening socket now, so a port in use is a configuration error.

    ``reserve_only``: bind with SO_REUSEPORT without listening, for workers to share.
    """
    if args.proxy_listen and not args.proxy_trusted:
        raise ConfigError("--proxy-listen needs --proxy-trusted")
    for network in args.proxy_trusted:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ConfigError(f"--proxy-trusted: {exc}") from None
    wanted: list[tuple[Kind, tuple[str, int]]] = [
        *(("plain", parse_address(a, "--listen")) for a in (args.listen or ["127.0.0.1:2525"])),
        *(("tls", parse_address(a, "--tls-listen")) for a in args.tls_listen),
        *(("proxy", parse_address(a, "--proxy-listen")) for a in args.proxy_listen),
    ]
    bound: list[BoundSocket] = []
    try:
        for kind, (host, port) in wanted:
            bound += bind(kind, host, port, reuse_port=reserve_only, listen=not reserve_only)
    except OSError as exc:
        for item in bound:
            item.sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    return bound


async def run(args: argparse.Namespace, config: Config, maildir: Maildir | None,
              sockets: list[BoundSocket]) -> int:
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    tls_listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    for item in sockets:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(item.sock))
        if item.kind == "tls":
            tls_listeners.append(listener)
        elif item.kind == "proxy":
            listeners.append(ProxyProtocolListener(listener, args.proxy_trusted))
        else:
            listeners.append(listener)
    fallback = None
    if args.tls_fallback:
        fallback = TLSFallback(*parse_fallback(args.tls_fallback))
    handler = SinkholeHandler(config.hostname, maildir, tarpit=args.tarpit,
                              tls_fallback=fallback, save_then_reject=args.save_then_reject,
                              rules=_load_rules(args.rules, dns=not args.no_dns),
                              resolver=make_resolver(args),
                              printer=Printer(args.print_style) if args.print_style else None)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, handler=handler,
                                             listeners=listeners, tls_listeners=tls_listeners))
        log_event("listening", addresses=[item.address for item in sockets],
                  lmtp=config.lmtp, maildir=None if maildir is None else str(maildir.path),
                  pid=os.getpid())
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                       signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload_rules(args.rules, handler, dns=not args.no_dns)
                    continue
                if server.shutting_down:
                    log_event("exit", signal=signal.Signals(signum).name)
                    os._exit(1)
                log_event("shutdown", signal=signal.Signals(signum).name)
                server.shutdown()
                nursery.start_soon(_stop_after_drain, server, nursery.cancel_scope)
    return 0


def _load_rules(path: str | None, *, dns: bool) -> RuleSet | None:
    if path is None:
        return None
    try:
        return _rules_for(path, dns)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None


def _rules_for(path: str, dns: bool) -> RuleSet:
    rules = load_rules(path)
    if not dns and rules.wants:
        raise RulesError(f"{path}: rules use DNS facts (host, dns, dnsbl, dbl, source, "
                         "sender_has, recipient_has), but --no-dns is set")
    return rules


def _reload_rules(path: str | None, handler: SinkholeHandler, *, dns: bool) -> None:
    if path is None:
        log_event("rules-reload", outcome="no --rules file")
        return
    try:
        rules = _rules_for(path, dns)
    except RulesError as exc:
        log_event("rules-reload", outcome="failed, previous rules kept", error=str(exc))
        return
    handler.rules = rules
    log_event("rules-reload", outcome="loaded", rules=len(rules))


async def _stop_after_drain(server: Server, scope: trio.CancelScope) -> None:
    await server.wait_closed()
    scope.cancel()


def _fail(message: str) -> NoReturn:
    print(f"trio-smtpd: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-password"]:
        return hash_password_command(argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format)
    try:
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        check_print_options(args)
        config, maildir = build_config(args)
        # A bad rules file is a configuration error, before binding.
        _load_rules(args.rules, dns=not args.no_dns)
        inherited = from_environment()
        supervisor = args.workers > 1 and inherited is None
        # TRIO_SMTPD_SHARED_SOCKET=1 forces the fallback used where SO_REUSEPORT is missing.
        reuse_port = REUSEPORT and not os.environ.get("TRIO_SMTPD_SHARED_SOCKET")
        sockets = inherited if inherited is not None else bind_listeners(
            args, reserve_only=supervisor and reuse_port)
        if supervisor:
            log_event("listening", addresses=[item.address for item in sockets],
                      workers=args.workers, pid=os.getpid())
            return supervise(args.workers, argv, sockets, reuse_port=reuse_port)
        return trio.run(run, args, config, maildir, sockets)
    except ConfigError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
