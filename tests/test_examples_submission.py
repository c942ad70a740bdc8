"""examples/submission.py, the example of docs/server.md's AUTH, client certificate, TLS
failure and XCLIENT sections, run against real clients; and the page shows it as it is."""

from __future__ import annotations

import logging
import re
import signal
import smtplib
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from tests.examples import ROOT, load_example
from tests.test_sasl_clients import (
    client_with_certificate,
    oauthbearer,
    scram_client,
    smtp_auth,
)
from trio_smtpd import serve
from trio_smtpd.testing import TestClient

EXAMPLE = ROOT / "examples" / "submission.py"
PASSWORD = "correct horse battery staple"


def test_the_page_shows_the_example_as_it_is() -> None:
    text = (ROOT / "docs" / "server.md").read_text()
    blocks = re.findall(r"```python\n# examples/submission\.py\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 4
    source = EXAMPLE.read_text()
    for block in blocks:
        assert block in source, block


async def test_every_way_in(ca: trustme.CA, cert_files: tuple[Path, Path, Path],
                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "submission")
    example = load_example("submission")
    cert, key, ca_file = (str(path) for path in cert_files)
    client_tls = client_with_certificate(ca, "alice")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, example.make_config(cert, key, ca_file),
                                             0, host="127.0.0.1", handler=example.handle))
        port = server.port
        scram = partial(smtp_auth, port, client_tls)
        codes, offered = await trio.to_thread.run_sync(scram, "SCRAM-SHA-256-PLUS", scram_client(
            "alice", PASSWORD, ["SCRAM-SHA-256-PLUS"], "tls-server-end-point"))
        assert codes == [235]
        assert offered == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "OAUTHBEARER", "XOAUTH2",
                           "EXTERNAL"]
        codes, _ = await trio.to_thread.run_sync(scram, "SCRAM-SHA-256", scram_client(
            "alice", "wrong", ["SCRAM-SHA-256"]))
        assert codes == [535]
        codes, _ = await trio.to_thread.run_sync(
            scram, "OAUTHBEARER", oauthbearer("alice", "ya29.alice-token"))
        assert codes == [235]
        codes, _ = await trio.to_thread.run_sync(
            scram, "EXTERNAL", lambda client: lambda challenge=None: "")
        assert codes == [235]
        await garbage_instead_of_tls(port)
        await through_a_proxy(port)
        server.shutdown()
    assert "TLS with ('127.0.0.1'," in caplog.text and "protocol error" in caplog.text
    assert "('192.0.2.9', 0) via ('127.0.0.1'," in caplog.text


async def garbage_instead_of_tls(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = TestClient(stream)
    await client.reply()
    await client.command("EHLO client.test")
    assert (await client.command("STARTTLS")).code == 220
    await stream.send_all(b"not TLS at all\r\n" * 20)
    with trio.fail_after(10):
        assert await client.closed()


async def through_a_proxy(port: int) -> None:
    client = TestClient(await trio.open_tcp_stream("127.0.0.1", port))
    await client.reply()
    await client.command("EHLO proxy.test")
    assert (await client.command("XCLIENT ADDR=192.0.2.9")).code == 220
    await client.command("QUIT")
    await client.aclose()


def test_the_example_runs(cert_files: tuple[Path, Path, Path]) -> None:
    process = subprocess.Popen([sys.executable, str(EXAMPLE), *map(str, cert_files), "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("listening on port ")
        with smtplib.SMTP("127.0.0.1", int(first.split()[-1]), timeout=10) as client:
            assert client.ehlo("client.test")[0] == 250  # (served: the signals are watched)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in err
