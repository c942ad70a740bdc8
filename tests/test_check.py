"""``trio-smtpd --check``: every option and file checked, what it would listen on
printed, exit 0 or 2, and nothing bound or created."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import AS_ROOT
from trio_smtpd.sinkhole.passwords import hash_password

RULES = """[[rule]]
name = "traps"
phase = "rcpt"
action = "reject"
[rule.match]
recipient = ["trap@"]
"""


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_smtpd", "--check", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_good_configuration_is_described_without_binding_anything(
        cert_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cert, key, _ = cert_files
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret', log2_n=10)}\n")
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    with socket.socket() as held:  # the port is taken: binding it would fail
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = check("--listen", f"127.0.0.1:{port}", "--tls-listen", "[::1]:4650",
                       "--tls-cert", str(cert), "--tls-key", str(key), "--auth-file",
                       str(users), "--rules", str(rules), "--rules", str(rules),
                       "--no-dns", "--metrics-listen", "127.0.0.1:9125", "--maildir",
                       str(tmp_path / "mail"), "--smtplog", str(tmp_path / "smtp.log"),
                       "--hostname", "mx.test", "--workers", "2", *AS_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line.split() for line in result.stdout.splitlines()[1:]]
    assert ["listen", f"127.0.0.1:{port}"] in lines
    assert ["tls-listen", "[::1]:4650"] in lines
    assert ["metrics", "http://127.0.0.1:9125/metrics", "and", "/healthz"] in lines
    assert ["maildir", str(tmp_path / "mail"), "(will", "be", "created)"] in lines
    assert ["store", "sqlite", "(index", f"{tmp_path / 'mail' / 'index.sqlite3'})"] in lines
    assert ["hostname", "mx.test", "(SMTP,", "STARTTLS,", "AUTH)"] in lines
    assert ["workers", "2"] in lines
    assert ["rules", f"{rules},", str(rules)] in lines
    # Nothing created either (the transcript file neither: as root, --user could not
    # have opened it).
    assert not (tmp_path / "mail").exists() and not (tmp_path / "smtp.log").exists()


def test_every_problem_is_reported_and_the_status_is_2(tmp_path: Path) -> None:
    bad_cert = tmp_path / "cert.pem"
    bad_cert.write_text("not a certificate\n")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nphase = "later"\naction = "reject"\n')
    result = check("--tls-cert", str(bad_cert), "--tls-key", str(bad_cert),
                   "--listen", "nowhere.invalid:25", "--metrics-listen", "9125",
                   "--user", "no-such-user-here", "--maildir", str(tmp_path / "m"))
    assert result.returncode == 2
    assert result.stdout == ""
    problems = result.stderr.splitlines()
    assert [p.split(":")[0] for p in problems] == ["trio-smtpd"] * 4
    assert "cannot load TLS certificate/key" in problems[0]
    assert "nowhere.invalid" in problems[1]
    assert "--metrics-listen '9125': expected HOST:PORT" in problems[2]
    assert "--user no-such-user-here: no such user" in problems[3]
    # The rules file is checked too, once the rest is right.
    result = check("--rules", str(rules), "--no-dns", "--maildir", str(tmp_path / "m"),
                   *AS_ROOT)
    assert result.returncode == 2 and "phase must be one of" in result.stderr


def test_an_unusable_maildir_or_a_bad_auth_file_is_a_problem(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = check("--maildir", str(blocker / "mail"), "--no-dns", *AS_ROOT)
    assert result.returncode == 2
    assert f"maildir {blocker / 'mail'}: cannot be created in {blocker}" in result.stderr
    users = tmp_path / "users"
    users.write_text("alice-without-a-hash\n")
    result = check("--auth-file", str(users), "--no-dns", "--maildir", str(tmp_path / "m"),
                   *AS_ROOT)
    assert result.returncode == 2
    assert str(users) in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_rule_savedir_is_checked_but_not_created(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nphase = "mail"\naction = "accept"\nsavedir = "trapsave"\n'
                     'match = { sender = ["x@y.z"] }\n')
    result = check("--rules", str(rules), "--no-dns", "--maildir", str(tmp_path / "m"),
                   *AS_ROOT)
    assert result.returncode == 0, result.stderr
    assert ["savedir", str(tmp_path / "trapsave"), "(will", "be", "created)"] in [
        line.split() for line in result.stdout.splitlines()]
    # --check creates nothing: not the Maildir, not the rule's savedir either.
    assert not (tmp_path / "trapsave").exists() and not (tmp_path / "m").exists()
    # A savedir that could not be created is still a problem, found without creating.
    (tmp_path / "blocker").write_text("")
    rules.write_text(rules.read_text().replace("trapsave", "blocker/trapsave"))
    result = check("--rules", str(rules), "--no-dns", "--maildir", str(tmp_path / "m"),
                   *AS_ROOT)
    assert result.returncode == 2
    assert f"savedir {tmp_path / 'blocker' / 'trapsave'}: cannot be created" in result.stderr


def test_a_hostname_no_greeting_could_carry_is_a_configuration_error(tmp_path: Path) -> None:
    # (Config refuses it since a review found a line break in it ended every connection
    # at its greeting; the program says so in one line, with the option's name.)
    result = check("--hostname", "mx test", "--maildir", str(tmp_path / "mail"))
    assert result.returncode == 2
    assert "--hostname 'mx test'" in result.stderr and "Traceback" not in result.stderr
