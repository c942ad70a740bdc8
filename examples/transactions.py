"""Example: the common case — iterate over complete transactions from every connection.

Run it, then send mail to port 2525 (``swaks --server 127.0.0.1:2525 --to you@example.org``).
Each message is printed and accepted; a message to ``spam@...`` is refused. Ctrl+C stops
it gracefully (a client in the middle of a message gets 451, not silence), twice at once.
"""

from __future__ import annotations

import sys

import trio

import trio_smtpd


async def main(port: int = 2525, max_messages: int | None = None) -> None:
    config = trio_smtpd.Config(hostname="mx.example.org")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_smtpd.serve, config, port)
        print(f"listening on port {server.port}", flush=True)
        nursery.start_soon(trio_smtpd.shutdown_on_signals, server)
        handled = 0
        async with server.transactions() as transactions:
            async for tx in transactions:  # clients wait until we decide
                recipients = ", ".join(str(r.address) for r in tx.recipients)
                print(f"from <{tx.sender}> to {recipients}: {tx.size} octets", flush=True)
                if any(r.address.local_part == "spam" for r in tx.recipients):
                    tx.reject(550, "No thanks", "5.7.1")
                else:
                    tx.accept()
                handled += 1
                if max_messages is not None and handled >= max_messages:
                    server.shutdown()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 2525
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else None
    trio.run(main, port, limit)
