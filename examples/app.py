"""Example: a trio program that receives mail beside another service of its own.

The SMTP server, the consumer of its messages and a small status service (one line per
TCP connection: messages received, connections open) share one nursery. Ctrl+C or
SIGTERM shuts down gracefully: accepting stops, clients in a transaction finish it, the
consumer's loop ends once the server has closed, the status service stops with it. A
second Ctrl+C cuts every client off with 421 at once. No traceback either way.

    python examples/app.py [SMTP_PORT [STATUS_PORT]]
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import trio_smtpd


class Stats:
    messages = 0


async def status_service(server: trio_smtpd.Server, stats: Stats, port: int,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Answer each connection with one status line, until the mail server has closed."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def answer(stream: trio.SocketStream) -> None:
        line = f"messages={stats.messages} connections={server.connections}\n"
        await stream.send_all(line.encode())
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, answer, listeners))
        await server.wait_closed()
        nursery.cancel_scope.cancel()


async def main(port: int = 2525, status_port: int = 2526) -> None:
    config = trio_smtpd.Config(hostname="mx.example.org")
    stats = Stats()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_smtpd.serve, config, port)
        nursery.start_soon(trio_smtpd.shutdown_on_signals, server)
        status = await nursery.start(status_service, server, stats, status_port)
        print(f"listening on port {server.port}, status on port {status}", flush=True)
        async with server.transactions() as transactions:
            async for tx in transactions:  # ends once the server has shut down
                stats.messages += 1
                print(f"message {stats.messages}: {tx.size} octets from <{tx.sender}>",
                      flush=True)
                tx.accept()
    print("stopped", flush=True)


if __name__ == "__main__":
    ports = [int(arg) for arg in sys.argv[1:3]] + [2525, 2526][len(sys.argv[1:3]):]
    trio.run(main, ports[0], ports[1])
