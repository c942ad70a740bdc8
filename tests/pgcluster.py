"""A private PostgreSQL server for the tests and the benchmark.

``initdb`` makes a cluster in a fresh temporary directory, ``pg_ctl`` starts it on a
free loopback port with its own socket directory (never the system's, never port
5432), and stops it. PostgreSQL refuses to run as root: when we are root, the cluster
belongs to, and runs as, the ``postgres`` system user that Debian's package creates
(``nobody`` if there is none). Debian keeps the programs in
``/usr/lib/postgresql/VERSION/bin``, off the PATH; the newest there is used.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["Cluster", "find_bindir"]


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are, or None if PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
    return Path(newest).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One PostgreSQL server: ``start()``, ``url(database)``, ``stop()``, ``remove()``."""

    def __init__(self, bindir: Path, *, autovacuum: bool = True) -> None:
        """``autovacuum``: False for the tests, whose leak check counts every process
        that appears during a test (the launcher would start workers on its own)."""
        self.bindir = bindir
        self.autovacuum = autovacuum
        self.dir = Path(tempfile.mkdtemp(prefix="trio-smtpd-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.dir, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run([str(self.bindir / program), *args], cwd=self.dir,
                                user=self.user, capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}\n{log}")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.dir} -c max_connections=200")
        if not self.autovacuum:
            options += " -c autovacuum=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect everyone; ``immediate``: as a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def remove(self) -> None:
        """Stop the server if it runs, and delete everything it had."""
        if self.running:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
