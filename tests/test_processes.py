"""The helpers behind the suite's leak check find what a test leaves running."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from tests.processes import kill_all, listening_sockets, processes_with

LISTENER = """
import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_a_detached_listener_is_found_by_its_marker_and_killed() -> None:
    marker = uuid.uuid4().hex
    # In a session of its own, as the sinkhole's workers are: not findable as our child.
    process = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE,
                               text=True, start_new_session=True,
                               env={**os.environ, "LEAK_CHECK_TEST": marker})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        found = processes_with("LEAK_CHECK_TEST", marker)
        assert list(found) == [process.pid]
        assert "import socket" in found[process.pid]
        assert list(listening_sockets({process.pid}).values()) == [f"127.0.0.1:{port}"]
        assert processes_with("LEAK_CHECK_TEST", "another value") == {}
        assert kill_all({process.pid}) == set()
        assert processes_with("LEAK_CHECK_TEST", marker) == {}
    finally:
        process.kill()
        process.wait(10)
