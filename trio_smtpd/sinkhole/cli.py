"""``trio-smtpd``: the sinkhole SMTP/LMTP server (and ``trio-smtpd hash-password``,
``trio-smtpd report``).

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
from .libraryevents import install as structure_library_events
from .lifecycle import block_signals, die_with_parent, supervisor_gone, unblock_signals
from .logs import configure_logging, log_event
from .memory import give_back_memory
from .options import build_parser
from .passwords import hash_password
from .printing import Printer
from .privileges import become
from .privileges import resolve as resolve_user
from .report import report_command
from .service import Operations, Supervision, metrics_socket
from .sockets import REUSEPORT, BoundSocket, from_environment
from .stores import Store
from .systemd import listen_fds
from .tlsfallback import TLSFallback, parse_fallback
from .trapoptions import handler_settings, reload_conncfg
from .workers import Worker, say_ready, supervise, worker_environment

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


def _listeners(args: argparse.Namespace, sockets: list[BoundSocket]) -> tuple[
        list[trio.abc.Listener[trio.abc.Stream]], list[trio.abc.Listener[trio.abc.Stream]]]:
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
    return listeners, tls_listeners


async def run(args: argparse.Namespace, config: Config, maildir: Maildir | None,
              sockets: list[BoundSocket], worker: Worker | None = None,
              ops: Operations | None = None, store: Store | None = None) -> int:
    ops = ops or Operations(None)
    listeners, tls_listeners = _listeners(args, sockets)
    handler = _handler(args, config, maildir, store)
    config = ops.configure(config, handler, maildir)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        unblock_signals()  # what came since main() started is delivered now
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, config, handler=handler,
                                                 listeners=listeners,
                                                 tls_listeners=tls_listeners))
            await nursery.start(ops.run, server)
            log_event("listening", addresses=[item.address for item in sockets],
                      lmtp=config.lmtp, maildir=None if maildir is None else str(maildir.path),
                      pid=os.getpid(), store=None if store is None else store.description)
            say_ready(worker)  # (serving now: the supervisor counts it alive from here)
            stopper = _Stopper(server, nursery, ops)
            nursery.start_soon(give_back_memory, server)
            if worker is not None and worker.liveness is not None:
                nursery.start_soon(_watch_supervisor, worker.liveness, stopper)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    ops.notifier.reloading()
                    reload_rules(args.rules, handler, dns=not args.no_dns)
                    reload_conncfg(args, handler)
                    ops.notifier.ready("rules reloaded")
                else:
                    stopper.signalled(signum)
    if store is not None:
        await store.aclose()
    return 0


def _handler(args: argparse.Namespace, config: Config, maildir: Maildir | None,
             store: Store | None = None) -> SinkholeHandler:
    fallback = None
    if args.tls_fallback:
        fallback = TLSFallback(*parse_fallback(args.tls_fallback))
    verify = verify_settings(args, config.hostname)
    try:
        trap = handler_settings(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return SinkholeHandler(config.hostname, maildir, tarpit=args.tarpit,
                           tls_fallback=fallback, save_then_reject=args.save_then_reject,
                           rules=load_rules_option(args.rules, dns=not args.no_dns,
                                                   verify=verify, create_savedirs=True),
                           resolver=make_resolver(args), verify=verify,
                           printer=Printer(args.print_style) if args.print_style else None,
                           store=store, **trap)


class _Stopper:
    """The first signal (or the supervisor's death) shuts down gracefully; a second
    signal exits at once."""

    def __init__(self, server: Server, nursery: trio.Nursery, ops: Operations) -> None:
        self._server, self._nursery, self._ops = server, nursery, ops
        self._signals = 0

    def signalled(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log_event("exit", signal=signal.Signals(signum).name)
            os._exit(1)
        self.stop(signal=signal.Signals(signum).name)

    def stop(self, **why: str) -> None:
        if self._server.shutting_down:
            return
        log_event("shutdown", **why)
        self._ops.notifier.stopping()
        self._server.shutdown()
        self._nursery.start_soon(self._cancel_after_drain)

    async def _cancel_after_drain(self) -> None:
        await self._server.wait_closed()
        self._nursery.cancel_scope.cancel()


async def _watch_supervisor(fd: int, stopper: _Stopper) -> None:
    await supervisor_gone(fd)
    stopper.stop(reason="supervisor gone")


def _fail(message: str) -> NoReturn:
    print(f"trio-smtpd: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-password"]:
        return hash_password_command(argv[1:])
    if argv[:1] == ["report"]:
        return report_command(argv[1:])
    block_signals()  # until their handlers are set: a SIGHUP now must not kill us
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format)
    structure_library_events()
    if args.check:
        from .checking import check
        return check(args)
    worker = worker_environment()
    if worker is not None and not die_with_parent(worker.supervisor):
        log_event("exit", reason="the supervisor died before this worker started")
        return 0
    try:
        return _start(args, argv, worker)
    except ConfigError as exc:
        _fail(str(exc))


def _start(args: argparse.Namespace, argv: list[str], worker: Worker | None) -> int:
    """Bind (or take systemd's or the supervisor's sockets), give up root, then serve or
    supervise."""
    config, maildir = build_config(args, share=worker.count if worker else 1)
    # A bad rules file is a configuration error, before binding (its savedirs are
    # created later, by _handler, as the --user that will write to them).
    load_rules_option(args.rules, dns=not args.no_dns,
                      verify=verify_settings(args, config.hostname))
    identity = resolve_user(args.user, args.group)
    inherited = from_environment()
    passed = listen_fds() if inherited is None else None  # systemd's sockets
    if args.workers > 1 and worker is None:
        # One socket shared by every worker where there is no SO_REUSEPORT (or
        # TRIO_SMTPD_SHARED_SOCKET=1 says so), and for sockets systemd passed.
        shared = not REUSEPORT or bool(os.environ.get("TRIO_SMTPD_SHARED_SOCKET"))
        groups = ([passed.listeners] * args.workers if passed else
                  bind_listeners(args, workers=args.workers, shared=shared))
        endpoint = metrics_socket(args.metrics_listen, passed)
        become(identity, maildir)  # every socket is bound: give up root now
        store = make_store(args, maildir)  # a store that cannot be used: exit 2, now
        if store is not None:
            trio.run(store.aclose)  # (each worker opens its own)
        log_event("listening", addresses=[item.address for item in groups[0]],
                  workers=args.workers, pid=os.getpid())
        return supervise(args.workers, argv, groups,
                         service=Supervision(endpoint, args.workers))
    sockets = inherited if inherited is not None else (
        passed.listeners if passed else bind_listeners(args)[0])
    endpoint = metrics_socket(args.metrics_listen, passed)
    become(identity, maildir)
    # As the user who will write to it (--user), and before anything is served.
    store = make_store(args, maildir)
    return trio.run(run, args, config, maildir, sockets, worker, Operations(endpoint), store)


if __name__ == "__main__":
    sys.exit(main())
