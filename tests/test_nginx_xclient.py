"""nginx's mail proxy with ``xclient on`` in front of the server: the handler sees the
original client, and a client that tries XCLIENT itself gets 550.

The test starts its own nginx (Debian's nginx and libnginx-mod-mail; .ci/run installs
them) with a private prefix and configuration on free loopback ports, and a tiny HTTP
responder for nginx's ``auth_http`` that sends every client to our server; it stops
both before it ends.
"""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

import trio_smtpd
from tests.conftest import require_program
from trio_smtpd import Config, Session, serve
from trio_smtpd.testing import TestClient

pytestmark = pytest.mark.interop

MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def auth_responder(upstream: int, requests: list[str],
                         task_status: trio.TaskStatus[int]) -> None:
    """nginx's auth_http server: every client may pass, to 127.0.0.1:``upstream``."""

    async def answer(stream: trio.SocketStream) -> None:
        request = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in request and (chunk := await stream.receive_some(4096)):
                request += chunk
        requests.append(request.decode("latin-1"))
        await stream.send_all(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n"
                              b"Auth-Server: 127.0.0.1\r\n"
                              + f"Auth-Port: {upstream}\r\n\r\n".encode())
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


def nginx_config(prefix: Path, front: int, auth: int) -> Path:
    config = prefix / "nginx.conf"
    config.write_text(f"""load_module {MAIL_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
mail {{
    server_name proxy.test;
    auth_http 127.0.0.1:{auth}/auth;
    xclient on;
    proxy_pass_error_message on;
    server {{
        listen 127.0.0.1:{front};
        protocol smtp;
        smtp_auth none;
    }}
}}
""")
    return config


async def test_nginx_mail_proxy_passes_the_original_client(tmp_path: Path) -> None:
    nginx = require_program("nginx")
    if not os.path.exists(MAIL_MODULE):
        require_program("libnginx-mod-mail (ngx_mail_module.so)")
    seen: list[trio_smtpd.SessionInfo] = []
    messages: list[bytes] = []

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Mail):
                seen.append(session.info.snapshot())
            if isinstance(decision, trio_smtpd.Message):
                messages.append(decision.transaction.data)
            decision.accept()

    config = Config(hostname="mx.test", xclient_trusted=("127.0.0.1/32",))
    requests: list[str] = []
    front = free_port()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, 0, host="127.0.0.1",
                                             handler=handler))
        auth = await nursery.start(auth_responder, server.port, requests)
        process = await trio.lowlevel.open_process(
            [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c",
             str(nginx_config(tmp_path, front, auth))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_listening(front, process, tmp_path)

            def send() -> None:
                # From 127.0.0.2: nginx itself talks to our server from 127.0.0.1.
                with smtplib.SMTP("127.0.0.1", front, timeout=10,
                                  source_address=("127.0.0.2", 0)) as client:
                    client.sendmail("a@example.org", ["b@example.net"],
                                    b"Subject: via nginx\r\n\r\nhello\r\n")

            await trio.to_thread.run_sync(send)
            await refused_directly(server.port)
        finally:
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            process.kill()
            await process.wait()
            server.shutdown()
            nursery.cancel_scope.cancel()
    [info] = seen
    assert info.peer is not None and info.peer[0] == "127.0.0.2"
    assert info.proxy is not None and info.proxy[0] == "127.0.0.1"
    assert info.xclient is not None and info.xclient["ADDR"] == "127.0.0.2"
    assert info.helo is not None  # the client's own EHLO, passed on after XCLIENT
    assert messages == [b"Subject: via nginx\r\n\r\nhello\r\n"]
    assert requests and "Client-IP: 127.0.0.2" in requests[0]


async def wait_listening(port: int, process: trio.Process, prefix: Path) -> None:
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                log = prefix / "error.log"
                assert process.returncode is None, log.read_text() if log.exists() else ""
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def refused_directly(port: int) -> None:
    """A client (not the trusted proxy) that sends XCLIENT itself gets 550."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.2", 0))
    await sock.connect(("127.0.0.1", port))
    client = TestClient(trio.SocketStream(sock))
    assert (await client.reply()).code == 220
    assert (await client.command("EHLO client.test")).code == 250
    assert (await client.command("XCLIENT ADDR=192.0.2.1")).code == 550
    await client.aclose()
