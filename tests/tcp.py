"""A server on a loopback TCP port and clients for it, for the tests that need real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from trio_smtpd import Config, Handler, Server, serve
from trio_smtpd.testing import TestClient


@asynccontextmanager
async def tcp_server(config: Config | None = None,
                     handler: Handler | None = None) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(
            serve, config or Config(hostname="mx.test"), 0, host="127.0.0.1",
            handler=handler))
        yield server
        server.shutdown()


async def connect(server: Server) -> TestClient:
    """A client that has read the greeting."""
    assert server.port is not None
    client = TestClient(await trio.open_tcp_stream("127.0.0.1", server.port))
    assert (await client.reply()).code == 220
    return client
