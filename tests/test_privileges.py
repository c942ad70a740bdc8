"""``--user``: port 25 bound as root, then served as ``nobody`` by the supervisor and every
worker, whose files belong to ``nobody``. This runs for real only as root (CI is root);
elsewhere it is skipped saying so, and under CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import site
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_smtpd
from tests.conftest import Sinkhole
from tests.operations import free_port, scrape, total, wait_until

MESSAGE = b"From: a@example.org\r\nSubject: port 25\r\n\r\nhello\r\n"


def _cannot(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        _cannot("binding port 25 and becoming nobody need root (run the tests as root)")
    return pwd.getpwnam("nobody")


def python_for(user: pwd.struct_passwd) -> tuple[str, dict[str, str]]:
    """An interpreter ``user`` may run, with what makes it find trio_smtpd and its
    dependencies: ours if the user can run it, else the system's of the same version."""
    project = str(Path(trio_smtpd.__file__).parent.parent)
    environments = [(sys.executable, {}), (
        f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
        {"PYTHONPATH": os.pathsep.join([project, *site.getsitepackages()])})]
    for python, extra in environments:
        if not os.path.exists(python):
            continue
        try:
            probe = subprocess.run(
                [python, "-c", "import trio_smtpd.sinkhole.cli, prometheus_client"],
                user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/",
                env={**os.environ, **extra}, capture_output=True, timeout=60)
        except PermissionError:  # (a directory on its path is closed to that user)
            continue
        if probe.returncode == 0:
            return python, extra
    _cannot(f"no Python that {user.pw_name} may run (ours, {sys.executable}, is not "
            "readable by that user, and there is no system Python of the same version)")
    raise AssertionError("unreachable")


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """Real, effective, saved and file-system uids and gids, and the groups."""
    fields = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return ([int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()],
            [int(x) for x in fields.get("Groups", "").split()])


@pytest.fixture
def open_directory() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="trio-smtpd-port25-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_port_25_served_as_nobody_by_the_supervisor_and_every_worker(
        nobody: pwd.struct_passwd, open_directory: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 25))
        except OSError as exc:
            pytest.fail(f"127.0.0.1:25 is taken on this machine ({exc}): stop what holds it")
    python, extra = python_for(nobody)
    maildir, metrics = open_directory / "maildir", free_port()
    log_path = open_directory / "log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [python, "-m", "trio_smtpd", "--listen", "127.0.0.1:25", "--user", "nobody",
             "--workers", "2", "--maildir", str(maildir), "--no-dns", "--log-format",
             "json", "--hostname", "mx.test", "--metrics-listen", f"127.0.0.1:{metrics}"],
            env={**os.environ, **extra}, stdout=subprocess.DEVNULL, stderr=log, cwd="/")
    sinkhole = Sinkhole(process, maildir, log_path, [25])
    try:
        sinkhole.wait_for("listening", 3, timeout=60)  # the supervisor's, each worker's
        [dropped] = sinkhole.events("privileges")
        assert dropped["uid"] == nobody.pw_uid and dropped["gid"] == nobody.pw_gid
        workers = [int(str(e["pid"])) for e in sinkhole.events("worker-start")]
        assert len(workers) == 2
        for pid in [process.pid, *workers]:
            uids, gids, groups = ids(pid)
            assert uids == [nobody.pw_uid] * 4, (pid, uids)
            assert gids == [nobody.pw_gid] * 4, (pid, gids)
            assert set(groups) <= set(os.getgrouplist("nobody", nobody.pw_gid)), groups
        for n in range(4):
            with smtplib.SMTP("127.0.0.1", 25, timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.net"], MESSAGE + b"%d\r\n" % n)
        stored = list((maildir / "new").iterdir())
        assert len(stored) == 4
        index = list(maildir.glob("index.sqlite3*"))  # (the database, its WAL, its shm)
        assert len(index) == 3
        for path in [*stored, maildir, maildir / "new", maildir / "tmp", *index]:
            assert path.stat().st_uid == nobody.pw_uid, path
        # The metrics endpoint (bound as root too) serves the workers' counts.
        wait_until(lambda: total(scrape(metrics)[1], "trio_smtpd_transactions_total",
                                 outcome="accepted") == 4, "four messages counted")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for event in sinkhole.events("worker-start"):
            _kill(int(str(event["pid"])))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_root_without_user_is_refused_after_binding(nobody: pwd.struct_passwd,
                                                    tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_smtpd", "--listen", "127.0.0.1:0", "--no-dns",
         "--maildir", str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to run as root" in result.stderr and "--user" in result.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "trio_smtpd", "--listen", "127.0.0.1:0", "--no-dns",
         "--maildir", str(tmp_path / "m"), "--user", "no-such-user-here"],
        capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "no such user" in unknown.stderr


def test_a_rule_savedir_is_created_and_used_as_nobody(nobody: pwd.struct_passwd,
                                                      open_directory: Path) -> None:
    # The rules' directory is nobody's to write in, as a savedir's parent must be.
    rules_dir = open_directory / "rules"
    rules_dir.mkdir()
    os.chown(rules_dir, nobody.pw_uid, nobody.pw_gid)
    rules = rules_dir / "rules.toml"
    rules.write_text('[[rule]]\nphase = "mail"\naction = "accept"\nsavedir = "trapsave"\n'
                     'match = { sender = ["a@example.org"] }\n')
    python, extra = python_for(nobody)
    maildir, log_path, port = open_directory / "maildir", open_directory / "log", free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [python, "-m", "trio_smtpd", "--listen", f"127.0.0.1:{port}", "--user", "nobody",
             "--maildir", str(maildir), "--rules", str(rules), "--no-dns", "--log-format",
             "json", "--hostname", "mx.test"],
            env={**os.environ, **extra}, stdout=subprocess.DEVNULL, stderr=log, cwd="/")
    sinkhole = Sinkhole(process, maildir, log_path, [port])
    try:
        wait_until(lambda: bool(sinkhole.events("listening")) or process.poll() is not None,
                   "listening, or exited")
        assert process.poll() is None, log_path.read_text()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.net"], MESSAGE)
        [stored] = list((rules_dir / "trapsave" / "new").iterdir())
        for path in [stored, rules_dir / "trapsave", rules_dir / "trapsave" / "tmp"]:
            assert path.stat().st_uid == nobody.pw_uid, path
        assert sinkhole.stop(signal.SIGTERM) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
