"""The options a spam trap wants, most of them sinksmtp's: checked, and turned into what
the handler uses.

* ``--smtplog FILE``: every session's transcript (the library's ``Transcript``: one
  escaped line per command and reply, AUTH secrets redacted), appended to FILE (``-``:
  standard output);
* ``--strict``: the library's strict defaults instead of the trap's leniency. By
  default the sinkhole takes what real senders send and Postfix accepts: ESMTP
  parameters on MAIL and RCPT after HELO (not only EHLO), and a HELO name that is not
  UTF-8 (its bytes kept as ``\\xNN`` escapes, and written as ``?`` in headers).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Any

from ..core import ProtocolConfig
from .safety import escape

__all__ = ["add_trap_options", "check_trap_options", "handler_settings", "lenient_protocol"]


def add_trap_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("spam trap (as sinksmtp)").add_argument
    add("--smtplog", metavar="FILE",
        help="append every session's transcript to FILE ('-': standard output), AUTH "
             "secrets redacted")
    add("--strict", action="store_true",
        help="refuse ESMTP parameters after HELO and HELO names that are not UTF-8, as "
             "RFC 5321 has it (by default both are taken, as Postfix does)")


def check_trap_options(args: argparse.Namespace) -> None:
    """Raises ValueError (one line) for a bad combination or a file that cannot be used."""
    if args.smtplog and args.smtplog == "-" and args.print_style:
        raise ValueError("--smtplog - and --print/--print-raw both want standard output")
    if args.smtplog and args.smtplog != "-":
        try:
            with open(args.smtplog, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot write --smtplog {args.smtplog}: {exc}") from None


def lenient_protocol(args: argparse.Namespace) -> ProtocolConfig:
    """The engine's settings: lenient for a trap, unless ``--strict``."""
    return ProtocolConfig(accept_8bit_helo=not args.strict,
                          accept_params_after_helo=not args.strict)


def handler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The handler's fields for these options (the log file opened here, per process)."""
    return {"smtplog": _transcript_writer(args.smtplog)}


def _transcript_writer(path: str | None) -> Callable[[str], None] | None:
    if not path:
        return None
    stream = sys.stdout if path == "-" else open(path, "a", encoding="utf-8",  # noqa: SIM115
                                                  buffering=1)

    def write(line: str) -> None:
        # A transcript that cannot be written never stops the server. (Replies repeat
        # what the client said, a HELO name say: escaped here, as lines read are.)
        with contextlib.suppress(OSError, ValueError):
            stream.write(escape(line) + "\n")

    return write
