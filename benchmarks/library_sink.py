"""The library alone, like aiosmtpd's Sink handler: accept everything, keep nothing, log
nothing. ``python benchmarks/library_sink.py PORT [--lmtp]``"""

from __future__ import annotations

import sys
from functools import partial

import trio

import trio_smtpd
from trio_smtpd import Message, Session


async def sink(session: Session) -> None:
    async for event in session:
        event.accept()
        if isinstance(event, Message):
            event.transaction.finish()  # LMTP: every recipient accepted


async def main(port: int, lmtp: bool) -> None:
    config = trio_smtpd.Config(hostname="bench.test", lmtp=lmtp, max_connections=20000,
                               max_connections_per_ip=20000, max_message_size=200 * 2**20)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio_smtpd.serve, config, port, host="127.0.0.1",
                                    handler=sink))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), "--lmtp" in sys.argv[2:])
