"""Shared fixtures: real TLS material made by trustme, and the sinkhole as a subprocess;
and a check, around every test, that it leaves no process and no listening socket behind."""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import trustme

from tests.dnsserver import SilentServer, Unbound, start_unbound
from tests.pgcluster import Cluster, find_bindir
from tests.processes import (
    kill_all,
    listening_sockets,
    processes_with,
    socket_inodes,
    wait_gone,
)

#: Every process the tests start inherits this variable, whatever becomes of its parent.
RUN_VARIABLE = "TRIO_SMTPD_TEST_RUN"
RUN_ID = uuid.uuid4().hex
os.environ[RUN_VARIABLE] = RUN_ID
#: Each sinkhole's processes (the supervisor and its workers) carry one of their own.
SINKHOLE_VARIABLE = "TRIO_SMTPD_TEST_SINKHOLE"
#: How long processes a test stopped may take to exit before they count as left behind.
EXIT_GRACE = 10.0


@pytest.fixture(autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """Fail the test that leaves a process it started, a thread or a listening socket
    behind.

    Autouse, so it is set up before and torn down after every other fixture of the test:
    what those fixtures stop in their teardown does not count as left behind. Session
    fixtures (unbound, the PostgreSQL server) are set up before it, so their processes
    are there before and after; what such a server starts during a test (PostgreSQL's
    backend for each connection) is counted like anything else.
    """
    before = set(processes_with(RUN_VARIABLE, RUN_ID))
    own_before = socket_inodes(os.getpid())
    threads_before = set(threading.enumerate())
    yield
    started = processes_with(RUN_VARIABLE, RUN_ID)
    left = wait_gone(set(started) - before, EXIT_GRACE)
    problems = []
    if left:
        sockets = {pid: sorted(listening_sockets({pid}).values()) for pid in left}
        kill_all(left)  # so that one leak does not also fail the tests after it
        problems += [f"process {pid} still running ({started[pid]}), listening on "
                     f"{sockets[pid] or 'nothing'}" for pid in sorted(left)]
    # Only sockets the test opened and left open are looked up among the listening ones.
    if socket_inodes(os.getpid()) - own_before:
        gc.collect()  # a socket nobody refers to any more is closed by its finaliser
        new = socket_inodes(os.getpid()) - own_before
        if new:
            problems += [f"listening socket {address} left open in the test process"
                         for inode, address in sorted(listening_sockets({os.getpid()}).items())
                         if inode in new]
    problems += [f"thread {thread.name!r} still running"
                 for thread in _threads_left(threads_before)]
    if problems:
        pytest.fail("the test left behind:\n" + "\n".join(problems), pytrace=False)


def _threads_left(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that do not end within ``EXIT_GRACE``. Trio's
    idle worker threads are not counted: trio keeps them for reuse and ends them itself."""
    deadline = time.monotonic() + EXIT_GRACE
    new = [thread for thread in threading.enumerate()
           if thread not in before and not thread.name.startswith("Trio thread")]
    for thread in new:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in new if thread.is_alive()]


# pytester runs pytest on generated projects (the tests of the pytest plugin).
pytest_plugins = ["pytester"]


@pytest.fixture(params=["direct", "stream"])
def both_transports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on both transports: plain sockets driven directly (the fast path) and
    ``trio.SocketStream`` (the portable reference path), so each checks the other."""
    from trio_smtpd._server import Server

    if request.param == "stream":
        monkeypatch.setattr(Server, "_direct", property(lambda self: False))
    return str(request.param)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "mx.test")


@pytest.fixture
def server_tls(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def cert_files(server_cert: trustme.LeafCert, ca: trustme.CA,
               tmp_path: Path) -> tuple[Path, Path, Path]:
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server_cert.private_key_pem.write_to_path(str(key))
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


#: Fixtures that run an external program for the tests that use them (set up once, so
#: _interop_is_marked sees the program only in the first such test): those tests are
#: interop tests too.
PROGRAM_FIXTURES = frozenset({"dns_server", "auth_dns", "postgres_cluster",
                              "own_postgres_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROGRAM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.interop)


#: The external programs the running test asked for (see _interop_is_marked).
_programs_used: list[str] = []


@pytest.fixture(autouse=True)
def _interop_is_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that runs an external program must say so with ``@pytest.mark.interop``,
    so that ``-m interop`` / ``-m 'not interop'`` select exactly that tier."""
    _programs_used.clear()
    yield
    if _programs_used and request.node.get_closest_marker("interop") is None:
        pytest.fail(f"uses {', '.join(_programs_used)} but is not marked interop",
                    pytrace=False)


def require_program(name: str, package: str | None = None) -> str:
    """The path of an external client program; missing ones fail loudly in CI."""
    _programs_used.append(name)
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        package = package or ("postfix" if name.startswith("smtp-") else
                              "fail2ban" if name.startswith("fail2ban-") else name)
        _missing(f"{name} is not installed (Debian package {package}; .ci/run installs it)")
    return str(path)


def require_perl_module(module: str, package: str) -> None:
    """A Perl module a test's helper script uses; missing ones fail loudly in CI."""
    perl = require_program("perl")
    if subprocess.run([perl, f"-M{module}", "-e1"], capture_output=True).returncode:
        _missing(f"Perl's {module} is not installed (Debian package {package}; .ci/run "
                 "installs it)")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def tls_and_auth(cert_files: tuple[Path, Path, Path], tmp_path: Path) -> list[str]:
    """Sinkhole options for STARTTLS and AUTH, with the user alice (password s3cret)."""
    from trio_smtpd.sinkhole.passwords import hash_password

    cert, key, _ = cert_files
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret', log2_n=10)}\n")
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-file", str(users)]


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    """A real DNS server (unbound) on loopback, serving tests/dnsserver.py's zone."""
    server = start_unbound(require_program("unbound"), tmp_path_factory.mktemp("unbound"))
    yield server
    server.stop()


def _postgres_bindir() -> Path:
    """Where PostgreSQL's initdb and pg_ctl are (the test is skipped, or fails in CI,
    if they are not installed)."""
    _programs_used.extend(["initdb", "pg_ctl"])
    bindir = find_bindir()
    if bindir is None:
        _missing("PostgreSQL's initdb and pg_ctl are not installed (Debian package "
                 "postgresql; .ci/run installs it)")
    assert bindir is not None
    return bindir


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A real PostgreSQL server of our own (initdb, pg_ctl) on a private loopback port and
    socket directory, for the whole session: each test takes a database of its own.

    Session-scoped fixtures are set up before _nothing_left_running looks, so the server's
    own processes are there before every test and are not counted as left behind; the
    backend each connection starts is, and must be gone by the end of the test (the
    sinkholes that held connections have stopped by then). Autovacuum is off, so that
    the server starts no process of its own accord during a test. A test that stops or
    restarts a server takes one of its own (own_postgres_cluster).
    """
    cluster = Cluster(_postgres_bindir(), autovacuum=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def own_postgres_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server for this test alone, stopped (and removed) when it ends: for
    tests that stop and start their server."""
    cluster = Cluster(_postgres_bindir(), autovacuum=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database in the session's PostgreSQL server."""
    name = f"t{time.monotonic_ns()}_{request.node.name[:40]}".lower()
    return postgres_cluster.create_database("".join(c if c.isalnum() else "_" for c in name))


@pytest.fixture
def silent_dns() -> Iterator[SilentServer]:
    """A nameserver address that never answers."""
    server = SilentServer()
    yield server
    server.close()


@dataclass
class Sinkhole:
    """The real ``trio-smtpd`` program, started as a subprocess on a free port."""

    process: subprocess.Popen[str]
    maildir: Path
    log_path: Path
    #: The value of SINKHOLE_VARIABLE in the environment of its processes.
    marker: str = ""
    ports: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ports[0]

    def log(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()
                if line.startswith("{")]

    def events(self, kind: str) -> list[dict[str, object]]:
        return [entry for entry in self.log() if entry["event"] == kind]

    def stored(self) -> list[bytes]:
        new = self.maildir / "new"
        return [(new / name).read_bytes() for name in self.stored_names()]

    def stored_names(self) -> list[str]:
        return sorted(os.listdir(self.maildir / "new"))

    def record_text(self, file: str) -> str:
        """The record of the stored file ``file`` as written: the JSON of its row in the
        SQLite index (the default store)."""
        index = f"{(self.maildir / 'index.sqlite3').as_uri()}?mode=ro"
        with closing(sqlite3.connect(index, uri=True)) as connection:
            [(metadata,)] = connection.execute(
                "SELECT metadata FROM messages WHERE file = ?", (file,)).fetchall()
        return str(metadata)

    def record(self, file: str) -> dict[str, Any]:
        """The record of the stored file ``file`` (its row's ``metadata``)."""
        return cast(dict[str, Any], json.loads(self.record_text(file)))

    def wait_for(self, kind: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} {kind} log line(s): {self.log()}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


# The program refuses to go on as root unless told so (--user root); the tests run as
# whoever runs them, and as root in CI.
AS_ROOT = ["--user", "root"] if os.geteuid() == 0 else []


def start_sinkhole(tmp_path: Path, *args: str, listen: int = 1, tls_listen: int = 0,
                   env: dict[str, str] | None = None, max_files: int | None = None) -> Sinkhole:
    """``env``: added to the environment; ``max_files``: its descriptor limit (ulimit -n)."""
    maildir = tmp_path / "maildir"
    log_path = tmp_path / f"sinkhole-{time.monotonic_ns()}.log"
    argv = [sys.executable, "-m", "trio_smtpd", "--log-format", "json", "--maildir",
            str(maildir), "--hostname", "mx.test", "--max-connections", "500", *AS_ROOT]
    argv += [a for _ in range(listen) for a in ("--listen", "127.0.0.1:0")]
    argv += [a for _ in range(tls_listen) for a in ("--tls-listen", "127.0.0.1:0")]
    argv += list(args)
    if "--dns-server" not in args:
        # Never the machine's own resolver: tests talk to loopback only.
        argv.append("--no-dns")
    def limit_files() -> None:
        if max_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    marker = uuid.uuid4().hex
    with log_path.open("w") as log_file:
        process = subprocess.Popen(argv, stderr=log_file, stdout=subprocess.DEVNULL, text=True,
                                   env={**os.environ, **(env or {}), SINKHOLE_VARIABLE: marker},
                                   preexec_fn=limit_files if max_files else None)
    sinkhole = Sinkhole(process, maildir, log_path, marker)
    deadline = time.monotonic() + 30
    while not sinkhole.events("listening"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            kill_all(set(processes_with(SINKHOLE_VARIABLE, marker)))
            raise AssertionError(f"sinkhole did not start: {log_path.read_text()}")
        time.sleep(0.02)
    addresses = sinkhole.events("listening")[0]["addresses"]
    assert isinstance(addresses, list)
    sinkhole.ports = [int(str(a).rsplit(":", 1)[1]) for a in addresses]
    return sinkhole


@pytest.fixture
def sinkhole_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Sinkhole] = []

    def factory(*args: str, **kw: Any) -> Sinkhole:
        sinkhole = start_sinkhole(tmp_path, *args, **kw)
        started.append(sinkhole)
        return sinkhole

    yield factory
    for sinkhole in started:
        if sinkhole.process.poll() is None:
            sinkhole.process.kill()
            sinkhole.process.wait(10)
        # Workers die with their supervisor (PR_SET_PDEATHSIG), but a test may have broken
        # that on purpose: every process carrying this sinkhole's marker goes.
        kill_all(set(processes_with(SINKHOLE_VARIABLE, sinkhole.marker)))
