"""The benchmark's PostgreSQL: one private server (tests/pgcluster.py) for the whole run,
started when the first ``trio_smtpd postgresql`` row needs it, a fresh database for each
run of that row, removed at exit."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgcluster import Cluster, find_bindir

__all__ = ["available", "database", "pids", "remove"]

_cluster: Cluster | None = None
_numbers = itertools.count(1)


def available() -> bool:
    return find_bindir() is not None and importlib.util.find_spec("psycopg") is not None


def database() -> str:
    """The URL of a new, empty database (the sinkhole migrates it at start)."""
    global _cluster
    if _cluster is None:
        bindir = find_bindir()
        assert bindir is not None
        _cluster = Cluster(bindir)
        _cluster.start()
    return _cluster.create_database(f"bench{next(_numbers)}")


def pids() -> list[int]:
    """The server's processes (the postmaster and its children), from /proc."""
    if _cluster is None:
        return []
    root = int((_cluster.data / "postmaster.pid").read_text().split()[0])
    children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                if _parent(p) == root]
    return [root, *children]


def _parent(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def remove() -> None:
    if _cluster is not None:
        _cluster.remove()
