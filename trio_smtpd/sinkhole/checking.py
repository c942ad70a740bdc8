"""``trio-smtpd --check``: every option and file checked, nothing bound or created.

It does what starting would do up to binding: the options, the TLS certificates and
keys (loaded), the auth file (parsed), the rules file (parsed, and checked against
--no-dns and --verify), --user and --group, the metrics address, --store (its database
is not opened); it resolves each listen address (without binding) and looks at the
Maildir and each rule's savedir. Each problem found is one line on standard error and
the exit status is 2; otherwise the plan is printed on standard output and the status
is 0. The listeners, the metrics address and the user are checked independently; within
the configuration the first problem ends that part (building it is what starting does,
step by step).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from ..maildir import Maildir
from .configure import (
    ConfigError,
    build_config,
    load_rules_option,
    parse_address,
    planned_listeners,
    store_spec,
    verify_settings,
)
from .privileges import Identity, check_not_root, resolve, summary
from .stores import INDEX_NAME

__all__ = ["check"]

EXIT_OK = 0
EXIT_CONFIG = 2
_KIND_NAMES = {"plain": "listen", "tls": "tls-listen", "proxy": "proxy-listen"}


def check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    plan: list[str] = []

    def step(what: Callable[[], None]) -> None:
        try:
            what()
        except ConfigError as exc:
            problems.append(str(exc))

    def configuration() -> None:
        config, maildir = build_config(args, create_maildir=False)
        rules = load_rules_option(args.rules, dns=not args.no_dns,
                                  verify=verify_settings(args, config.hostname))
        plan.append(f"hostname      {config.hostname} ({'LMTP' if config.lmtp else 'SMTP'}"
                    f"{', STARTTLS' if config.tls else ''}"
                    f"{', AUTH' if config.authenticator else ''})")
        plan.append(f"maildir       {_maildir_state(maildir)}")
        if maildir is not None:
            plan.append(f"store         {_store_state(args, maildir)}")
        if args.rules:
            plan.append(f"rules         {', '.join(args.rules)}")
        for _, savedir in rules.savedirs if rules is not None else ():
            plan.append(f"savedir       {_maildir_state(savedir, 'savedir')}")

    identity: list[Identity | None] = []

    def user() -> None:
        identity.append(resolve(args.user, args.group))
        check_not_root(identity[0])
        plan.append(f"user          {summary(identity[0])}")

    step(configuration)
    step(lambda: plan.extend(_listeners(args)))
    step(lambda: plan.extend(_metrics(args)))
    step(user)
    if problems:
        for problem in problems:
            print(f"trio-smtpd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print("trio-smtpd: configuration OK; would start with:")
    if args.workers > 1:
        plan.append(f"workers       {args.workers}")
    for line in plan:
        print(f"  {line}")
    return EXIT_OK


def _listeners(args: argparse.Namespace) -> list[str]:
    lines = []
    for kind, (host, port) in planned_listeners(args):
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise ConfigError(f"--{_KIND_NAMES[kind]} {host}:{port}: {exc}") from None
        for address in sorted({_text(info[4]) for info in infos}):
            lines.append(f"{_KIND_NAMES[kind]:<13} {address}")
    if os.environ.get("LISTEN_FDS"):
        lines.append("(sockets passed by systemd are used instead of these)")
    return lines


def _metrics(args: argparse.Namespace) -> list[str]:
    if args.metrics_listen is None:
        return []
    host, port = parse_address(args.metrics_listen, "--metrics-listen")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("--metrics-listen needs prometheus-client: pip install "
                          "'trio-smtpd[metrics]'") from None
    return [f"metrics       http://{_text((host, port))}/metrics and /healthz"]


def _text(address: tuple[object, ...]) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _maildir_state(maildir: Maildir | None, what: str = "maildir") -> str:
    """Whether the Maildir (or a rule's savedir) exists or can be created, found out
    without creating anything."""
    if maildir is None:
        return "none (messages are not stored)"
    path = maildir.path.absolute()
    if path.is_dir():
        if not os.access(path / "tmp" if (path / "tmp").is_dir() else path, os.W_OK):
            raise ConfigError(f"{what} {path}: not writable")
        return f"{path} (exists)"
    parent = _existing_parent(path)
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} {path}: cannot be created in {parent}")
    return f"{path} (will be created)"


def _store_state(args: argparse.Namespace, maildir: Maildir) -> str:
    spec = store_spec(args, maildir)
    if spec == "sqlite":
        return f"sqlite (index {maildir.path.absolute() / INDEX_NAME})"
    if spec == "maildir":
        return "maildir (files and sidecars, no index)"
    return "postgresql (the database is not contacted by --check)"


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
