"""From the command line to what the server runs with: checked options, the TLS context,
the authenticator, the Maildir, the resolver, the rules and the bound listeners.

Every problem is a ``ConfigError``: one line, exit status 2, before anything listens.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
import ssl

from .. import Config, Timeouts
from .._ratelimit import RateLimit
from .._settings import Authenticator, is_server_name
from ..dns import Resolver, parse_nameserver
from ..maildir import CommitProcess, Maildir
from ..verify import KINDS
from .authguard import AuthGuard
from .handler import SinkholeHandler
from .logs import log_event
from .options import (
    DEFAULT_DNS_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    MAX_DNS_TIMEOUT,
    MAX_VERIFY_TIMEOUT,
)
from .passwords import AuthFileError, load_auth_file
from .rules import RulesError, RuleSet, load_rules
from .sockets import BoundSocket, Kind, bind, bind_group
from .stores import Store, is_postgresql, open_store
from .stores.postgresql import available as postgresql_available
from .stores.schema import SchemaError
from .tlsfallback import parse_fallback
from .trapoptions import check_trap_options, lenient_protocol
from .verifying import VerifySettings

__all__ = ["ConfigError", "bind_listeners", "build_config", "load_rules_option",
           "make_resolver", "make_store", "planned_listeners", "reload_rules",
           "store_spec", "verify_settings"]


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


_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
# Durations that must be more than 0, and those that may be 0.
_POSITIVE = ("timeout", "data_timeout", "tls_timeout", "write_timeout")
_AT_LEAST_0 = ("tarpit", "shutdown_grace", "auth_delay")


def parse_rate(text: str, option: str) -> tuple[int, float]:
    """``N/UNIT`` (UNIT: second, minute or hour; N alone: per minute) -> (N, seconds)."""
    count, _, unit = text.partition("/")
    period = _UNITS.get(unit.strip().lower() or "minute")
    if not count.strip().isdigit() or int(count) < 1 or period is None:
        raise ConfigError(f"{option} {text!r}: expected N/UNIT, N at least 1 and UNIT one "
                          "of second, minute, hour")
    return int(count), period


def build_config(args: argparse.Namespace, *, share: int = 1, create_maildir: bool = True
                 ) -> tuple[Config, Maildir | None]:
    """The server's config and the Maildir (created, unless ``create_maildir`` is False:
    ``--check`` changes nothing). ``share``: this process serves one worker's share of the
    connections (``--max-connections`` divided among ``--workers``)."""
    _check_numbers(args)
    check_dns_options(args)
    verify_settings(args, "")
    tls = _tls_context(args)
    rate = parse_rate(args.max_connection_rate, "--max-connection-rate") if (
        args.max_connection_rate) else None
    hostname = args.hostname or socket.gethostname()
    if not is_server_name(hostname):
        raise ConfigError(f"--hostname {hostname!r}: not a domain name or an address "
                          "literal (it begins the greeting and every EHLO reply)")
    config = Config(
        hostname=hostname,
        lmtp=args.lmtp,
        tls=tls,
        authenticator=_authenticator(args),
        max_message_size=args.max_message_size,
        max_recipients=args.max_recipients,
        max_connections=-(-args.max_connections // share),
        max_connections_per_ip=args.max_connections_per_ip,
        max_connection_rate=rate[0] if rate else None,
        connection_rate_period=rate[1] if rate else 60.0,
        timeouts=Timeouts(command=args.timeout, data_block=args.data_timeout,
                          tls_handshake=args.tls_timeout, write=args.write_timeout,
                          shutdown_grace=args.shutdown_grace),
        protocol=lenient_protocol(args),
    )
    try:
        check_trap_options(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    maildir = _maildir(args, create_maildir)
    store_spec(args, maildir)
    return config, maildir


def _check_numbers(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.print_style and args.workers > 1:
        # Whole messages from several processes would interleave on one output.
        raise ConfigError("--print and --print-raw need a single process (--workers 1)")
    if min(args.max_message_size, args.max_recipients, args.max_connections,
           args.max_connections_per_ip) < 1:
        raise ConfigError("--max-message-size, --max-recipients, --max-connections and "
                          "--max-connections-per-ip must be positive")
    for name in _POSITIVE + _AT_LEAST_0:
        value = getattr(args, name)
        if not (math.isfinite(value) and (value > 0 if name in _POSITIVE else value >= 0)):
            least = "more than 0" if name in _POSITIVE else "at least 0"
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number of "
                              f"seconds, {least} (not {value})")
    parse_rate(args.max_auth_failures, "--max-auth-failures")
    if args.tls_fallback:
        try:
            parse_fallback(args.tls_fallback)
        except ValueError as exc:
            raise ConfigError(f"--tls-fallback: {exc}") from None


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
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
    return tls


def _authenticator(args: argparse.Namespace) -> Authenticator | None:
    if not args.auth_file:
        return None
    try:
        users = load_auth_file(args.auth_file)
    except AuthFileError as exc:
        raise ConfigError(str(exc)) from None
    return AuthGuard(users, delay=args.auth_delay,
                     budget=RateLimit(*parse_rate(args.max_auth_failures,
                                                  "--max-auth-failures")))


def _maildir(args: argparse.Namespace, create: bool = True) -> Maildir | None:
    """--print and --print-raw store nothing unless --maildir is given; without them,
    messages go to ./maildir by default."""
    if args.maildir is None and not args.print_style:
        args.maildir = "./maildir"
    if args.discard or args.maildir is None:
        return None
    maildir = Maildir(args.maildir)
    if not create:
        return maildir
    try:
        maildir.create()
    except OSError as exc:
        raise ConfigError(f"cannot use maildir {args.maildir}: {exc}") from None
    return maildir


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


def verify_settings(args: argparse.Namespace, hostname: str) -> VerifySettings | None:
    """Which checks each message gets: all, by default, whenever DNS is on."""
    explicit = args.verify is not None or args.verify_timeout is not None
    if args.no_verify and explicit:
        raise ConfigError("--no-verify and --verify/--verify-timeout contradict each other")
    if args.no_dns and explicit:
        raise ConfigError("--verify and --verify-timeout need DNS, but --no-dns is set")
    if args.no_verify or args.no_dns:
        return None
    text = ",".join(KINDS) if args.verify is None else args.verify
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    wrong = [k for k in kinds if k not in KINDS]
    if wrong or not kinds:
        raise ConfigError(f"--verify takes some of {','.join(KINDS)}, not {args.verify!r}")
    if "dmarc" in kinds and not {"spf", "dkim"} <= set(kinds):
        raise ConfigError("--verify: dmarc needs spf and dkim")
    timeout = args.verify_timeout
    if timeout is not None and not (math.isfinite(timeout)
                                    and 0 < timeout <= MAX_VERIFY_TIMEOUT):
        raise ConfigError(f"--verify-timeout must be more than 0 and at most "
                          f"{MAX_VERIFY_TIMEOUT:g} seconds")
    return VerifySettings(frozenset(kinds), timeout or DEFAULT_VERIFY_TIMEOUT, hostname)


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


def bind_listeners(args: argparse.Namespace, *, workers: int = 1, shared: bool = False
                   ) -> list[list[BoundSocket]]:
    """Bind every listening socket now, so a port in use is a configuration error; one
    list of sockets per worker (see ``sockets``: a group per address, or, ``shared``, the
    same sockets for every worker)."""
    bound: list[list[BoundSocket]] = [[] for _ in range(workers)]
    try:
        for kind, (host, port) in planned_listeners(args):
            if workers == 1 or shared:
                sockets = bind(kind, host, port)
                for worker in bound:
                    worker += sockets
            else:
                group = bind_group(kind, host, port, workers,
                                   by_address=args.worker_routing == "address")
                for worker, sockets in zip(bound, group, strict=True):
                    worker += sockets
    except OSError as exc:
        for worker in bound:
            for item in worker:
                item.sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    return bound


def planned_listeners(args: argparse.Namespace) -> list[tuple[Kind, tuple[str, int]]]:
    """What the listening options ask for, checked (nothing bound)."""
    if args.proxy_listen and not args.proxy_trusted:
        raise ConfigError("--proxy-listen needs --proxy-trusted")
    for network in args.proxy_trusted:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ConfigError(f"--proxy-trusted: {exc}") from None
    return [
        *(("plain", parse_address(a, "--listen")) for a in (args.listen or ["127.0.0.1:2525"])),
        *(("tls", parse_address(a, "--tls-listen")) for a in args.tls_listen),
        *(("proxy", parse_address(a, "--proxy-listen")) for a in args.proxy_listen),
    ]


def load_rules_option(path: list[str] | None, *, dns: bool,
                      verify: VerifySettings | None = None,
                      create_savedirs: bool = False) -> RuleSet | None:
    """The rules, checked. ``create_savedirs``: only where they are put to use, by the
    process that serves them, once --user has dropped root (so the savedirs are that
    user's); --check and the check before binding create nothing."""
    if not path:
        return None
    try:
        return _rules_for(path, dns, verify, create_savedirs)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None


def _rules_for(paths: list[str], dns: bool, verify: VerifySettings | None,
               create_savedirs: bool) -> RuleSet:
    rules = load_rules(paths)
    named = ", ".join(paths)
    if not dns and rules.wants:
        raise RulesError(f"{named}: rules use DNS facts (host, dns, dnsbl, dbl, source, "
                         "sender_has, recipient_has), but --no-dns is set")
    missing = rules.verify - (verify.kinds if verify is not None else frozenset())
    if missing:
        raise RulesError(f"{named}: rules use {', '.join(sorted(missing))} results, which "
                         "are not checked (--no-dns, --no-verify or --verify)")
    for label, savedir in rules.savedirs if create_savedirs else ():
        try:
            savedir.create()  # (and its write probe)
        except OSError as exc:
            raise RulesError(f"{named}: {label}: cannot use savedir {savedir.path}: "
                             f"{exc}") from None
    return rules


def reload_rules(path: list[str] | None, handler: SinkholeHandler, *, dns: bool) -> None:
    if not path:
        log_event("rules-reload", outcome="no --rules file")
        return
    try:
        rules = _rules_for(path, dns, handler.verify, create_savedirs=True)
    except RulesError as exc:
        log_event("rules-reload", outcome="failed, previous rules kept", error=str(exc))
        return
    handler.rules = rules
    log_event("rules-reload", outcome="loaded", rules=len(rules))


def store_spec(args: argparse.Namespace, maildir: Maildir | None) -> str | None:
    """--store and its settings, checked without opening anything (so by --check too):
    the store to open, or None when nothing is stored."""
    if not (math.isfinite(args.store_timeout) and 0 < args.store_timeout <= 600):
        raise ConfigError("--store-timeout must be more than 0 and at most 600 seconds")
    if args.store_body_limit < 0 or args.store_connections < 1:
        raise ConfigError("--store-body-limit must be at least 0, --store-connections 1")
    if maildir is None:
        if args.store is not None:
            raise ConfigError("--store needs somewhere to store: not with --discard, "
                              "and with --print only alongside --maildir")
        return None
    spec: str = args.store or "sqlite"
    if spec in ("sqlite", "maildir"):
        return spec
    if not is_postgresql(spec):
        raise ConfigError(f"--store {spec!r}: expected sqlite, maildir or "
                          "postgresql://...")
    if args.save_hash is not None:
        # A hash names a file in one Maildir; a fleet's database names messages for all.
        raise ConfigError("--save-hash is for --store sqlite or maildir, not PostgreSQL")
    if not postgresql_available():
        raise ConfigError("--store postgresql needs psycopg: pip install "
                          "'trio-smtpd[postgresql]'")
    return spec


def make_store(args: argparse.Namespace, maildir: Maildir | None) -> Store | None:
    """The store --store names, open, its schema up to date (None: nothing is stored).

    Opened once root is given up (``--user``): the SQLite index is created by the user
    who writes to it."""
    spec = store_spec(args, maildir)
    if spec is None or maildir is None:
        return None
    try:
        return open_store(spec, maildir, body_limit=args.store_body_limit,
                          timeout=args.store_timeout, connections=args.store_connections,
                          commit_process=CommitProcess())
    except (OSError, ValueError, SchemaError) as exc:
        raise ConfigError(f"cannot use the store: {exc}") from None
