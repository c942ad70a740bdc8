"""Shared fixtures: real TLS material made by trustme, and the sinkhole as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.dnsserver import SilentServer, Unbound, start_unbound
from tests.pgcluster import Cluster, find_bindir

# pytester runs pytest on generated projects: the tests of the pytest plugin.
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


def require_program(name: str, package: str | None = None) -> str:
    """The path of an external client program; missing ones fail loudly in CI."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        package = package or ("postfix" if name.startswith("smtp-") else name)
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


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    """A real DNS server (unbound) on loopback, serving tests/dnsserver.py's zone."""
    server = start_unbound(require_program("unbound"), tmp_path_factory.mktemp("unbound"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A real PostgreSQL server of our own (initdb, pg_ctl) on a private loopback port and
    socket directory, for the whole session: each test takes a database of its own."""
    bindir = find_bindir()
    if bindir is None:
        _missing("PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)")
    assert bindir is not None
    cluster = Cluster(bindir)
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
        return [(new / name).read_bytes() for name in sorted(os.listdir(new))]

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


def start_sinkhole(tmp_path: Path, *args: str, listen: int = 1,
                   tls_listen: int = 0) -> Sinkhole:
    maildir = tmp_path / "maildir"
    log_path = tmp_path / f"sinkhole-{time.monotonic_ns()}.log"
    argv = [sys.executable, "-m", "trio_smtpd", "--log-format", "json", "--maildir",
            str(maildir), "--hostname", "mx.test", "--max-connections", "500"]
    argv += [a for _ in range(listen) for a in ("--listen", "127.0.0.1:0")]
    argv += [a for _ in range(tls_listen) for a in ("--tls-listen", "127.0.0.1:0")]
    argv += list(args)
    if "--dns-server" not in args:
        # Never the machine's own resolver: tests talk to loopback only.
        argv.append("--no-dns")
    with log_path.open("w") as log_file:
        process = subprocess.Popen(argv, stderr=log_file, stdout=subprocess.DEVNULL, text=True)
    sinkhole = Sinkhole(process, maildir, log_path)
    deadline = time.monotonic() + 30
    while not sinkhole.events("listening"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"sinkhole did not start: {log_path.read_text()}")
        time.sleep(0.02)
    addresses = sinkhole.events("listening")[0]["addresses"]
    assert isinstance(addresses, list)
    sinkhole.ports = [int(str(a).rsplit(":", 1)[1]) for a in addresses]
    return sinkhole


@pytest.fixture
def sinkhole_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Sinkhole] = []

    def factory(*args: str, **kw: int) -> Sinkhole:
        sinkhole = start_sinkhole(tmp_path, *args, **kw)
        started.append(sinkhole)
        return sinkhole

    yield factory
    for sinkhole in started:
        if sinkhole.process.poll() is None:
            sinkhole.process.kill()
            sinkhole.process.wait(10)
