"""An earlier commit of trio_smtpd beside the working tree, for before/after rows in one
run: ``--baseline REF`` extracts the package and the benchmark's library server at REF
(``git archive``) into a temporary directory, run with PYTHONPATH pointing there."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

__all__ = ["extract", "library_sink_command"]

ROOT = Path(__file__).resolve().parent.parent


def extract(ref: str) -> Path:
    """The source tree of ``ref`` (trio_smtpd/ and benchmarks/), removed at exit."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "trio_smtpd",
                              "benchmarks/library_sink.py"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    where = Path(tempfile.mkdtemp(prefix="trio_smtpd-baseline-"))
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    return where


def library_sink_command(python: str, tree: Path, port: int, *flags: str
                         ) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``tree``'s library_sink.py on ``port``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return [python, str(tree / "benchmarks" / "library_sink.py"), str(port), *flags], env
