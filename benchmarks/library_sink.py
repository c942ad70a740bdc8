"""The library alone, like aiosmtpd's Sink handler: accept everything, keep nothing, log
nothing. ``python benchmarks/library_sink.py PORT [--lmtp] [--transactions] [--streams]``

By default a handler answers each decision (``serve(handler=...)``); with
``--transactions``, messages go through ``Server.transactions()`` instead, the README's
first example. ``--streams`` drives plain sockets as ``trio.SocketStream``
(``Config(direct_sockets=False)``), the portable path, to measure what the direct one
saves."""

from __future__ import annotations

import sys
from functools import partial

import trio

import trio_smtpd
from trio_smtpd import Session


async def sink(session: Session) -> None:
    async for decision in session:
        decision.accept()  # (a Message's accept() answers every LMTP recipient)


async def main(port: int, lmtp: bool, transactions: bool, streams: bool) -> None:
    config = trio_smtpd.Config(hostname="bench.test", lmtp=lmtp, max_connections=20000,
                               max_connections_per_ip=20000, max_message_size=200 * 2**20,
                               direct_sockets=not streams)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio_smtpd.serve, config, port, host="127.0.0.1",
                                             handler=None if transactions else sink))
        if transactions:
            async with server.transactions() as txs:
                async for tx in txs:
                    tx.accept()


if __name__ == "__main__":
    flags = sys.argv[2:]
    trio.run(main, int(sys.argv[1]), "--lmtp" in flags, "--transactions" in flags,
             "--streams" in flags)
