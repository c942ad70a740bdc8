"""Example: fine-grained decisions per connection, at every step, in protocol order.

Refuses clients that say HELO ``localhost``, unknown recipients at RCPT time, and
tempfails a sender, each with its own reply; accepts the rest and prints each message.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import trio_smtpd
from trio_smtpd import Hello, Mail, Message, Rcpt, Session

USERS = {"alice", "bob"}


async def handle(session: Session) -> None:
    async for event in session:
        match event:
            case Hello(name="localhost"):
                event.reject(550, "Say who you really are", "5.7.1")
            case Mail(sender=sender) if sender is not None and sender.domain == "later.test":
                event.tempfail(451, "Greylisted, try again later", "4.7.1")
            case Rcpt(address=address) if address.local_part not in USERS:
                event.reject(550, "No such user here", "5.1.1")
            case Message(transaction=tx):
                print(f"{session.info.peer}: {tx.size} octets for "
                      f"{[str(r.address) for r in tx.recipients]}", flush=True)
                event.accept()
            case _:
                event.accept()


async def main(port: int = 2525) -> None:
    config = trio_smtpd.Config(hostname="mx.example.org")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio_smtpd.serve, config, port, handler=handle))
        print(f"listening on port {server.port}", flush=True)
        # Ctrl+C (or SIGTERM) shuts down gracefully; a second one, at once.
        nursery.start_soon(trio_smtpd.shutdown_on_signals, server)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 2525)
