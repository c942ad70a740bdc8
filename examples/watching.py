"""A server that gives its partners larger limits and a greeting of their own, and keeps a
transcript of every session: the examples of docs/server.md's "Each connection its own
settings" and "Watching a session", which tests/test_examples_watching.py runs.

    python examples/watching.py TRANSCRIPT [PORT]
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

import trio

import trio_smtpd

PARTNERS = [ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("192.0.2.0/24")]


def is_partner(peer: tuple[str, int] | None) -> bool:
    return peer is not None and any(ipaddress.ip_address(peer[0]) in net for net in PARTNERS)


def make_handler(transcripts: TextIO) -> Callable[[trio_smtpd.Session], Awaitable[None]]:
    async def handle(session: trio_smtpd.Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Connect):   # set it here to hear the greeting
                session.observer = trio_smtpd.Transcript(
                    lambda line: print(line, file=transcripts), session.info.id)
            if isinstance(decision, trio_smtpd.Connect) and is_partner(session.info.peer):
                session.config = dataclasses.replace(
                    session.config, max_message_size=200 * 2**20,
                    protocol=dataclasses.replace(session.config.protocol,
                                                 greeting=("Welcome back",)))
            decision.accept()

    return handle


async def main(path: str, port: int) -> None:
    with open(path, "a", buffering=1) as transcripts:
        config = trio_smtpd.Config(hostname="mx.example", max_message_size=10 * 2**20)
        await trio_smtpd.serve(config, port, handler=make_handler(transcripts))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2525)
