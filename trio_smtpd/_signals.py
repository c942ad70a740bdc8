"""Signals for a trio application that serves mail: the first one shuts the server down
gracefully, the second at once, as Postfix and the sinkhole program do."""

from __future__ import annotations

import signal

import trio

from ._server import Server

__all__ = ["shutdown_on_signals"]


async def shutdown_on_signals(server: Server, *signals: int) -> None:
    """Until ``server`` has closed: the first of ``signals`` (SIGINT and SIGTERM by
    default) starts a graceful shutdown, the next one cuts every session off with 421.

    Start it beside ``serve()`` (``nursery.start_soon(shutdown_on_signals, server)``), so
    that Ctrl+C ends the program cleanly, with no traceback and no client left unanswered.
    """
    watched = signals or (signal.SIGINT, signal.SIGTERM)
    with trio.open_signal_receiver(*watched) as received:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_closed, server, nursery.cancel_scope)
            async for _ in received:
                server.shutdown(grace=0 if server.shutting_down else None)


async def _cancel_when_closed(server: Server, scope: trio.CancelScope) -> None:
    await server.wait_closed()
    scope.cancel()
