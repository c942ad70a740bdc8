"""The helpers behind the suite's leak check find what a test leaves running."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

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


LEAKY_TESTS = """
import socket, subprocess, sys, threading
stop = threading.Event()
held = []

def test_leaves_a_thread():
    threading.Thread(target=stop.wait, name="leaky", daemon=True).start()

def test_leaves_a_listening_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held.append(server)

def test_leaves_a_process():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

def test_cleans_up():
    stop.set()
    for server in held:
        server.close()
"""


@pytest.mark.pytester
def test_the_leak_check_fails_the_test_that_leaks(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's own check (tests/conftest.py), in a project of its own, with a short grace.
    pytester.makeconftest("import tests.conftest as suite\n"
                          "from tests.conftest import _nothing_left_running  # noqa: F401\n"
                          "suite.EXIT_GRACE = 0.5\n")
    pytester.makepyfile(LEAKY_TESTS)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent.parent))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio", "-rE")
    result.assert_outcomes(passed=4, errors=3)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaves_a_thread*", "the test left behind:",
        "thread 'leaky' still running",
        "*ERROR at teardown of test_leaves_a_listening_socket*", "the test left behind:",
        "listening socket 127.0.0.1:* left open in the test process",
        "*ERROR at teardown of test_leaves_a_process*", "the test left behind:",
        "process * still running (*time.sleep(60)), listening on nothing",
    ])
