"""The options a spam trap wants, most of them sinksmtp's: checked, and turned into what
the handler uses.

* ``--smtplog FILE``: every session's transcript (the library's ``Transcript``: one
  escaped line per command and reply, AUTH secrets redacted), appended to FILE (``-``:
  standard output);
* ``--dncount N``, ``--dndur DURATION``, ``--minphase PHASE``: do-nothing clients
  (:mod:`.yakkers`);
* ``--save-hash msg|full|all``: files named by their hash (:mod:`.hashstore`);
* ``--conncfg FILE``: host name and certificate per local address (:mod:`.conncfg`);
* ``--strict``: the library's strict defaults instead of the trap's leniency. By
  default the sinkhole takes what real senders send and Postfix accepts: ESMTP
  parameters on MAIL and RCPT after HELO (not only EHLO), and a HELO name that is not
  UTF-8 (its bytes kept as ``\\xNN`` escapes, and written as ``?`` in headers).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import ProtocolConfig
from .conncfg import ConnConfigError, load_conncfg
from .handler import SinkholeHandler
from .hashstore import SAVE_HASHES
from .logs import log_event
from .yakkers import ALIASES, MINPHASES, Yakkers, parse_duration

__all__ = ["add_trap_options", "check_trap_options", "handler_settings", "lenient_protocol",
           "reload_conncfg"]

DEFAULT_DNDUR = "8h"


def add_trap_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("spam trap (as sinksmtp)").add_argument
    add("--smtplog", metavar="FILE",
        help="append every session's transcript to FILE ('-': standard output), AUTH "
             "secrets redacted")
    add("--dncount", type=int, default=0, metavar="N",
        help="refuse (421 at connect) an address whose last N sessions, each within "
             "--dndur of the one before, got nowhere (default 0: off)")
    add("--dndur", default=DEFAULT_DNDUR, metavar="DURATION",
        help="window of --dncount, and how long such an address is refused "
             f"(3600, 90s, 30m, 8h; default {DEFAULT_DNDUR})")
    add("--minphase", default="helo", metavar="PHASE",
        help="what a session must reach not to count for --dncount: "
             f"{', '.join(MINPHASES)} (default helo)")
    add("--save-hash", choices=SAVE_HASHES, default=None,
        help="name stored files by the hash of the message (msg), of it and its envelope "
             "(full), or of everything (all); the same file is never stored twice")
    add("--conncfg", metavar="FILE",
        help="host name and certificate by local address, in sinksmtp's -conncfg format; "
             "SIGHUP reloads it")
    add("--strict", action="store_true",
        help="refuse ESMTP parameters after HELO and HELO names that are not UTF-8, as "
             "RFC 5321 has it (by default both are taken, as Postfix does)")


def check_trap_options(args: argparse.Namespace) -> None:
    """Raises ValueError (one line) for a bad combination or a file that cannot be used."""
    if args.dncount < 0:
        raise ValueError("--dncount must be 0 (off) or more")
    Yakkers(max(args.dncount, 1), _dndur(args), _minphase(args))
    if args.smtplog and args.smtplog == "-" and args.print_style:
        raise ValueError("--smtplog - and --print/--print-raw both want standard output")
    if args.smtplog and args.smtplog != "-":
        _check_writable(Path(args.smtplog))
    if args.conncfg:
        load_conncfg(args.conncfg)


def _check_writable(path: Path) -> None:
    """Without creating it: ``--check`` changes nothing, and a file created now, as
    root, could not be opened by the ``--user`` the server becomes."""
    if path.is_dir():
        raise ValueError(f"cannot write --smtplog {path}: it is a directory")
    where = path if path.exists() else path.absolute().parent
    if not os.access(where, os.W_OK):
        raise ValueError(f"cannot write --smtplog {path}: {where} is not writable")


def _dndur(args: argparse.Namespace) -> float:
    try:
        seconds = parse_duration(args.dndur)
    except ValueError as exc:
        raise ValueError(f"--dndur: {exc}") from None
    if seconds < 1:
        raise ValueError("--dndur must be at least one second")
    return seconds


def _minphase(args: argparse.Namespace) -> str:
    phase = str(args.minphase).lower()
    if ALIASES.get(phase, phase) not in MINPHASES:
        raise ValueError(f"--minphase must be one of {', '.join(MINPHASES)}")
    return phase


def lenient_protocol(args: argparse.Namespace) -> ProtocolConfig:
    """The engine's settings: lenient for a trap, unless ``--strict``."""
    return ProtocolConfig(accept_8bit_helo=not args.strict,
                          accept_params_after_helo=not args.strict)


def handler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The handler's fields for these options (the log file opened here, per process).
    Raises ValueError for a file that cannot be used."""
    return {"smtplog": _transcript_writer(args.smtplog),
            "yakkers": Yakkers(args.dncount, _dndur(args), _minphase(args))
            if args.dncount else None,
            "conncfg": load_conncfg(args.conncfg) if args.conncfg else None,
            "save_hash": args.save_hash}


def _transcript_writer(path: str | None) -> Callable[[str], None] | None:
    if not path:
        return None
    try:
        stream = sys.stdout if path == "-" else open(path, "a", encoding="utf-8",  # noqa: SIM115
                                                      buffering=1)
    except OSError as exc:  # (opened by each process, after --user took effect)
        raise ValueError(f"cannot write --smtplog {path}: {exc}") from None

    def write(line: str) -> None:
        # A transcript that cannot be written never stops the server. (Transcript has
        # escaped the line: what a client sent, and the replies that echo it.)
        with contextlib.suppress(OSError, ValueError):
            stream.write(line + "\n")

    return write


def reload_conncfg(args: argparse.Namespace, handler: SinkholeHandler) -> None:
    """SIGHUP: read ``--conncfg`` again; a bad file keeps the previous settings."""
    if not args.conncfg:
        return
    try:
        handler.conncfg = load_conncfg(args.conncfg)
    except ConnConfigError as exc:
        log_event("conncfg-reload", outcome="failed, previous settings kept", error=str(exc))
        return
    log_event("conncfg-reload", outcome="loaded")

