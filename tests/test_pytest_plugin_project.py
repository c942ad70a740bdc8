"""The pytest plugin in fresh projects, run by pytester in subprocesses.

The project under test has no conftest and no configuration: its tests get the fixtures
from trio_smtpd's ``pytest11`` entry point alone. trio_smtpd comes from its wheel,
installed as pip installs it (``pip install --target``), so that what is checked is
what ships, entry point and top-level plugin module included.

"Only ``pip install trio_smtpd``" is imitated by hiding pytest-trio (``-p no:trio``)
and making ``import trustme`` and ``import pytest_trio`` fail: the plugin must load
and the thread fixture must work without either.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.pytester


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """trio_smtpd's wheel, built from this tree and installed into a directory of its own."""
    wheels = tmp_path_factory.mktemp("wheel")
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, timeout=300)
    [wheel] = wheels.glob("trio_smtpd-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    return target


@pytest.fixture
def bare_project(pytester: pytest.Pytester, installed: Path,
                 monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project whose environment has trio_smtpd (the wheel) but neither trustme nor
    pytest-trio."""
    hidden = pytester.mkdir("hidden")
    for module in ("trustme.py", "pytest_trio.py"):
        (hidden / module).write_text("raise ImportError('not installed in this project')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hidden), str(installed)]))
    monkeypatch.setenv("INSTALLED", str(installed))
    return pytester


BARE_TESTS = '''
import sys

LIBRARY_AT_COLLECTION = sorted(m for m in sys.modules if m.split(".")[0] == "trio_smtpd")

import os
import smtplib
import socket
import threading

import pytest


def test_loading_the_plugin_imported_nothing_of_the_library():
    assert LIBRARY_AT_COLLECTION == []


def test_trio_smtpd_is_the_installed_wheel():
    import _trio_smtpd_pytestplugin
    import trio_smtpd
    for module in (_trio_smtpd_pytestplugin, trio_smtpd):
        assert module.__file__.startswith(os.environ["INSTALLED"]), module.__file__


def test_send_and_check(smtp_server_thread):
    with smtplib.SMTP(smtp_server_thread.host, smtp_server_thread.port) as client:
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
    [message] = smtp_server_thread.messages
    assert message.message["Subject"] == "hi"


@pytest.mark.smtp_server(lmtp=True, users={"alice": "secret"}, max_size=5000)
def test_options_from_the_marker(smtp_server_thread):
    with smtplib.LMTP(smtp_server_thread.host, smtp_server_thread.port) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "5000"
        client.login("alice", "secret")
        smtp_server_thread.fail_next("RCPT", 450, "4.2.1 mailbox busy")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@example.org", ["b@example.org"], b"x\\r\\n")


@pytest.mark.smtp_server(tls="starttls")
def test_tls_without_trustme(smtp_server_thread):
    pass


@pytest.mark.smtp_server(lmpt=True)
def test_misspelt_option(smtp_server_thread):
    pass


def test_trio_fixture_without_pytest_trio(smtp_server):
    pass


STATE = {}


def descriptors():
    return {(fd, os.readlink(f"/proc/self/fd/{fd}")) for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_leak_1_before():
    STATE.update(threads=set(threading.enumerate()), fds=descriptors())


def test_leak_2_a_client_still_connected_at_teardown(smtp_server_thread):
    STATE["port"] = smtp_server_thread.port
    STATE["client"] = client = socket.create_connection(("127.0.0.1", smtp_server_thread.port),
                                                        timeout=10)
    assert client.recv(100).startswith(b"220")


def test_leak_3_nothing_left():
    client = STATE.pop("client")
    assert client.recv(100).startswith(b"421")  # told so by the server at teardown
    client.close()
    assert set(threading.enumerate()) <= STATE["threads"]
    assert descriptors() <= STATE["fds"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", STATE["port"]))
'''


def test_a_fresh_project_with_only_trio_smtpd(bare_project: pytest.Pytester) -> None:
    bare_project.makepyfile(test_app=BARE_TESTS)
    result = bare_project.runpytest_subprocess("-p", "no:trio", "-p", "no:cacheprovider",
                                               "-v")
    result.assert_outcomes(passed=7, errors=3)
    result.stdout.fnmatch_lines_random([
        "*ERROR at setup of test_tls_without_trustme*",
        "*a test server with TLS needs trustme: pip install 'trio_smtpd?testing?'*",
        "*ERROR at setup of test_misspelt_option*",
        "*smtp_server_thread: bad option: *unexpected keyword argument 'lmpt'*",
        "*ERROR at setup of test_trio_fixture_without_pytest_trio*",
        "*the smtp_server fixture is for trio tests and needs pytest-trio*",
    ])


TRIO_TESTS = '''
import smtplib
import ssl
import threading

import pytest
import trio


@pytest.mark.smtp_server(tls="starttls", users={"alice": "secret"})
async def test_trio_app(smtp_server):
    def send():
        with smtplib.SMTP(smtp_server.host, smtp_server.port) as client:
            client.starttls(context=ssl.create_default_context(cafile=smtp_server.ca_file))
            client.login("alice", "secret")
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\\r\\n\\r\\nx\\r\\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, send)
        [message] = await smtp_server.wait_for(1)
    assert message.authenticated_as == "alice" and message.tls is not None


@pytest.mark.parametrize("smtp_server", [{"lmtp": True}], indirect=True)
async def test_parameters(smtp_server):
    assert smtp_server.options.lmtp


def test_sync_test_asking_for_the_trio_fixture(smtp_server):
    pass


def test_no_thread_left():
    assert [t for t in threading.enumerate() if t.name.startswith("trio_smtpd")] == []
'''


def test_a_trio_project_with_pytest_trio_and_the_testing_extra(
        pytester: pytest.Pytester, installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(installed))
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_app=TRIO_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_sync_test_asking_for_the_trio_fixture*",
        "*smtp_server is for trio tests: mark this one @pytest.mark.trio*",
    ])


def test_importing_the_plugin_imports_only_pytest_and_itself() -> None:
    code = ("import sys, pytest; before = set(sys.modules); import _trio_smtpd_pytestplugin; "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "['_trio_smtpd_pytestplugin']"
