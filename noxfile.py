"""Developer and CI tasks: ``nox -s tests lint typecheck docs`` is what CI runs."""

from __future__ import annotations

import glob
import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, including the interop tier when its clients are installed."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    # No import cycle, no function over 50 lines, Session under 300 lines.
    session.run("python", "tools/check_structure.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    # The pytest plugin's entry module is top-level (see its docstring).
    session.run("mypy", "--strict", "trio_smtpd", "examples", "_trio_smtpd_pytestplugin.py")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The guides and the API reference (from the docstrings); any warning fails it."""
    session.install("-e", ".", "sphinx>=7", "myst-parser>=3")
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs",
                "docs/_build/html")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """trio_smtpd (and its stores) against aiosmtpd, Postfix's smtp-sink and Postfix,
    loaded by smtp-source."""
    if not os.path.exists("/usr/sbin/smtp-source"):
        # Debian's postfix, without a mail configuration so that it starts no server.
        session.run("sh", "-c", "echo 'postfix postfix/main_mailer_type select No "
                    "configuration' | debconf-set-selections && apt-get update -qq && "
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                    "--no-install-recommends postfix", external=True)
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        # The PostgreSQL store's row starts a private server (benchmarks/pgserver.py).
        session.run("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                    "apt-get install -y -qq --no-install-recommends postgresql",
                    external=True)
    session.install("-e", ".[postgresql]", "aiosmtpd==1.4.6")
    session.run("python", "benchmarks/engine.py")
    session.run("python", "benchmarks/bench.py", *session.posargs)
    session.run("python", "benchmarks/idle.py", env={"PYTHONPATH": "benchmarks"})


@nox.session(python=PYTHON)
def mutate(session: nox.Session) -> None:
    """Mutation testing of the sans-I/O core and maildir.py (mutmut; not run in CI).

    Settings are in pyproject.toml's [tool.mutmut]: which modules, which (fast, socket-
    free) tests. Niced and one mutant at a time, to leave the machine to its users.
    Then prints the score, counting the mutants tests/MUTANTS.md lists as equivalent
    out, and any survivor that is neither killed nor listed there. ``nox -s mutate --
    NAME...`` re-runs only those mutants (mutmut remembers the others' results).
    """
    session.install("-e", ".[test]", "mutmut==3.8.1")
    session.run("nice", "-n", "15", "mutmut", "run", "--max-children", "1", *session.posargs,
                external=True)
    session.run("python", "tests/mutation_score.py")


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing (atheris) of the engine and the address/parameter parsers."""
    session.install("-e", ".", "atheris")
    seconds = session.posargs[0] if session.posargs else "60"
    for harness in ("fuzz/fuzz_engine.py", "fuzz/fuzz_address.py"):
        session.run("python", harness, f"-max_total_time={seconds}", "-rss_limit_mb=1024")
