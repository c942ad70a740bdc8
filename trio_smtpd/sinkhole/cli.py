"""``trio-smtpd``: the sinkhole SMTP/LMTP server (and ``trio-smtpd hash-password``).

Configuration errors are one line on stderr and exit status 2. SIGTERM or SIGINT shuts
down gracefully (in-flight transactions get the grace period); a second one exits at once.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

import trio

from .. import Config, ProxyProtocolListener, Server, serve
from ..maildir import Maildir
from .configure import (
    ConfigError,
    bind_listeners,
    build_config,
    load_rules_option,
    make_resolver,
    make_store,
    reload_rules,
    verify_settings,
)
from .handler import SinkholeHandler
from .logs import configure_logging, log_event
from .options import build_parser
from .passwords import hash_password
from .printing import Printer
from .report import report_command
from .sockets import REUSEPORT, BoundSocket, from_environment
from .stores import Store
from .tlsfallback import TLSFallback, parse_fallback
from .workers import supervise

__all__ = ["main"]

EXIT_CONFIG = 2


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


async def run(args: argparse.Namespace, config: Config, maildir: Maildir | None,
              sockets: list[BoundSocket], store: Store | None = None) -> int:
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
    verify = verify_settings(args, config.hostname)
    handler = SinkholeHandler(config.hostname, maildir, tarpit=args.tarpit,
                              tls_fallback=fallback, save_then_reject=args.save_then_reject,
                              rules=load_rules_option(args.rules, dns=not args.no_dns,
                                                      verify=verify),
                              resolver=make_resolver(args), verify=verify,
                              printer=Printer(args.print_style) if args.print_style else None,
                              store=store)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, handler=handler,
                                             listeners=listeners, tls_listeners=tls_listeners))
        log_event("listening", addresses=[item.address for item in sockets],
                  lmtp=config.lmtp, maildir=None if maildir is None else str(maildir.path),
                  pid=os.getpid(), store=None if store is None else store.description)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                       signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload_rules(args.rules, handler, dns=not args.no_dns)
                    continue
                if server.shutting_down:
                    log_event("exit", signal=signal.Signals(signum).name)
                    os._exit(1)
                log_event("shutdown", signal=signal.Signals(signum).name)
                server.shutdown()
                nursery.start_soon(_stop_after_drain, server, nursery.cancel_scope)
    if store is not None:
        await store.aclose()
    return 0


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
    if argv[:1] == ["report"]:
        return report_command(argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format)
    try:
        config, maildir = build_config(args)
        # A bad rules file is a configuration error, before binding.
        load_rules_option(args.rules, dns=not args.no_dns,
                          verify=verify_settings(args, config.hostname))
        store = make_store(args, maildir)  # a store that cannot be used: exit 2, now
        inherited = from_environment()
        supervisor = args.workers > 1 and inherited is None
        # TRIO_SMTPD_SHARED_SOCKET=1 forces the fallback used where SO_REUSEPORT is missing.
        reuse_port = REUSEPORT and not os.environ.get("TRIO_SMTPD_SHARED_SOCKET")
        sockets = inherited if inherited is not None else bind_listeners(
            args, reserve_only=supervisor and reuse_port)
        if supervisor:
            if store is not None:
                trio.run(store.aclose)  # (each worker opens its own)
            log_event("listening", addresses=[item.address for item in sockets],
                      workers=args.workers, pid=os.getpid())
            return supervise(args.workers, argv, sockets, reuse_port=reuse_port)
        return trio.run(run, args, config, maildir, sockets, store)
    except ConfigError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
