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
from functools import partial

import trio

from .. import Config, Credentials, PlainCredentials, Timeouts
from .._settings import Authenticator
from ..dns import Resolver, parse_nameserver
from ..maildir import Maildir
from ..verify import KINDS
from .handler import SinkholeHandler
from .logs import log_event
from .options import (
    DEFAULT_DNS_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    MAX_DNS_TIMEOUT,
    MAX_VERIFY_TIMEOUT,
)
from .passwords import AuthFileError, load_auth_file, verify_password
from .rules import RulesError, RuleSet, load_rules
from .sockets import BoundSocket, Kind, bind
from .stores import Store, open_store
from .stores.schema import SchemaError
from .tlsfallback import parse_fallback
from .verifying import VerifySettings

__all__ = ["ConfigError", "bind_listeners", "build_config", "load_rules_option",
           "make_resolver", "make_store", "reload_rules", "verify_settings"]


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


def build_config(args: argparse.Namespace) -> tuple[Config, Maildir | None]:
    _check_numbers(args)
    check_dns_options(args)
    verify_settings(args, "")
    tls = _tls_context(args)
    config = Config(
        hostname=args.hostname or socket.gethostname(),
        lmtp=args.lmtp,
        tls=tls,
        authenticator=_authenticator(args),
        max_message_size=args.max_message_size,
        max_recipients=args.max_recipients,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections,
        timeouts=Timeouts(command=args.timeout),
    )
    return config, _maildir(args)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.print_style and args.workers > 1:
        # Whole messages from several processes would interleave on one output.
        raise ConfigError("--print and --print-raw need a single process (--workers 1)")
    if args.max_message_size < 1 or args.max_recipients < 1 or args.max_connections < 1:
        raise ConfigError("--max-message-size, --max-recipients and --max-connections "
                          "must be positive")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ConfigError("--timeout must be a positive number of seconds")
    if not (math.isfinite(args.tarpit) and args.tarpit >= 0):
        raise ConfigError("--tarpit must be a number of seconds, at least 0")
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
    return partial(_authenticate, users)


def _maildir(args: argparse.Namespace) -> Maildir | None:
    """--print and --print-raw store nothing unless --maildir is given; without them,
    messages go to ./maildir by default."""
    if args.maildir is None and not args.print_style:
        args.maildir = "./maildir"
    if args.discard or args.maildir is None:
        return None
    maildir = Maildir(args.maildir)
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


def load_rules_option(path: str | None, *, dns: bool,
                      verify: VerifySettings | None = None) -> RuleSet | None:
    if path is None:
        return None
    try:
        return _rules_for(path, dns, verify)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None


def _rules_for(path: str, dns: bool, verify: VerifySettings | None) -> RuleSet:
    rules = load_rules(path)
    if not dns and rules.wants:
        raise RulesError(f"{path}: rules use DNS facts (host, dns, dnsbl, dbl, source, "
                         "sender_has, recipient_has), but --no-dns is set")
    missing = rules.verify - (verify.kinds if verify is not None else frozenset())
    if missing:
        raise RulesError(f"{path}: rules use {', '.join(sorted(missing))} results, which "
                         "are not checked (--no-dns, --no-verify or --verify)")
    return rules


def reload_rules(path: str | None, handler: SinkholeHandler, *, dns: bool) -> None:
    if path is None:
        log_event("rules-reload", outcome="no --rules file")
        return
    try:
        rules = _rules_for(path, dns, handler.verify)
    except RulesError as exc:
        log_event("rules-reload", outcome="failed, previous rules kept", error=str(exc))
        return
    handler.rules = rules
    log_event("rules-reload", outcome="loaded", rules=len(rules))


def make_store(args: argparse.Namespace, maildir: Maildir | None) -> Store | None:
    """The store --store names, its schema checked (None: nothing is stored)."""
    if not (math.isfinite(args.store_timeout) and 0 < args.store_timeout <= 600):
        raise ConfigError("--store-timeout must be more than 0 and at most 600 seconds")
    if args.store_body_limit < 0 or args.store_connections < 1:
        raise ConfigError("--store-body-limit must be at least 0, --store-connections 1")
    if maildir is None:
        if args.store is not None:
            raise ConfigError("--store needs somewhere to store: not with --discard, "
                              "and with --print only alongside --maildir")
        return None
    try:
        return open_store(args.store or "sqlite", maildir, body_limit=args.store_body_limit,
                          timeout=args.store_timeout, connections=args.store_connections)
    except (OSError, ValueError, SchemaError) as exc:
        raise ConfigError(f"cannot use the store: {exc}") from None
