"""psycopg under trio: worker threads, or its non-blocking calls driven by trio's waits?

psycopg 3 has no trio support. The PostgreSQL store (trio_smtpd/sinkhole/stores/
postgresql.py) runs its blocking API in worker threads behind a CapacityLimiter, with
psycopg_pool's connection pool. The other way is to drive libpq's non-blocking calls
(``psycopg.pq``: send, flush, consume_input, get_result) from trio tasks, waiting with
``trio.lowlevel.wait_readable``/``wait_writable``: no threads, but no pool, no health
checks and no reconnection either unless we write them.

This measures both on the same rows and the store's own statement (a message, its
recipients and listings in one statement, in autocommit mode: one round trip), against
a private PostgreSQL (tests/pgcluster.py), with 20 trio tasks sharing 4 connections as
20 sessions would: messages per second and this process's CPU per message (all its
threads: the CPU the sinkhole would spend; the server's own is the same either way).
Two more rows split the threads' cost: psycopg alone (blocking, no trio, no thread),
and a worker-thread round trip alone. The modes take turns, run after run; medians.

    python benchmarks/pg_driver.py [--messages 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import trio
from psycopg import pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgcluster import Cluster, find_bindir
from trio_smtpd.maildir import Maildir
from trio_smtpd.sinkhole.stores.postgresql import (
    INSERT,
    PostgresStore,
    insert_parameters,
    migrate_postgresql,
)
from trio_smtpd.sinkhole.stores.schema import MESSAGE_COLUMNS, Row, message_row

TASKS = 20
CONNECTIONS = 4


def sample_row(number: int) -> Row:
    record = {"file": f"bench-{number}-{time.monotonic_ns()}", "session": "1.1",
              "peer": "192.0.2.7:1234", "helo": "bot.example", "auth": None, "tls": None,
              "sender": "x@spam.example", "recipients": ["trap@trap.test"], "size": 1024,
              "sha256": "0" * 64, "rule": None, "received": "2026-11-25T03:41:26+00:00",
              "dns": None, "authentication_results": None}
    return message_row(record, host="bench", file=None, body=b"x" * 1024)


async def run_tasks(messages: int, insert: Callable[[Row], Awaitable[None]]) -> None:
    counter = iter(range(messages))

    async def task() -> None:
        for number in counter:
            await insert(sample_row(number))

    async with trio.open_nursery() as nursery:
        for _ in range(TASKS):
            nursery.start_soon(task)


async def with_threads(url: str, messages: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = PostgresStore(url, Maildir(tmp), body_limit=1 << 20, timeout=10,
                              connections=CONNECTIONS)
        await store.insert(sample_row(-1))  # (the pool is opened at first use)
        await run_tasks(messages, store.insert)
        await store.aclose()


class TrioConnection:
    """libpq's asynchronous API on one connection, waited on with trio."""

    def __init__(self, url: str) -> None:
        self.pgconn = pq.PGconn.connect(url.encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            raise RuntimeError(self.pgconn.get_error_message())
        self.pgconn.nonblocking = 1

    async def execute(self, sql: bytes, params: list[bytes | None] | None = None,
                      formats: list[int] | None = None) -> pq.abc.PGresult:
        pgconn = self.pgconn
        pgconn.send_query_params(sql, params or [], param_formats=formats)
        while pgconn.flush():
            await trio.lowlevel.wait_writable(pgconn.socket)
        last = None
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    assert last is not None
                    if last.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
                        raise RuntimeError(last.error_message)
                    return last
                last = result
            await trio.lowlevel.wait_readable(pgconn.socket)


def text(value: object) -> bytes | None:
    """A parameter in PostgreSQL's text format (arrays of text as array literals)."""
    if value is None:
        return None
    if isinstance(value, list):
        quoted = ('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
                  for v in value)
        return ("{" + ",".join(quoted) + "}").encode()
    return str(value).encode()


async def with_waits(url: str, messages: int) -> None:
    free = [TrioConnection(url) for _ in range(CONNECTIONS)]
    available = trio.Semaphore(CONNECTIONS)
    body = MESSAGE_COLUMNS.index("body")
    sql = INSERT
    number = 0
    while "%s" in sql:
        number += 1
        sql = sql.replace("%s", f"${number}", 1)
    statement = sql.encode()

    async def insert(row: Row) -> None:
        async with available:
            connection = free.pop()
            try:
                params: list[bytes | None] = [text(v) for v in insert_parameters(row)]
                params[body] = row.message[body]  # (bytea, in the binary format)
                formats = [1 if i == body else 0 for i in range(len(params))]
                await connection.execute(statement, params, formats)
            finally:
                free.append(connection)

    await run_tasks(messages, insert)
    for connection in free:
        connection.pgconn.finish()


def blocking(url: str, messages: int) -> None:
    """psycopg's own cost: the same statement, one connection, no trio, no thread."""
    with psycopg.connect(url, autocommit=True) as connection:
        for number in range(messages):
            connection.execute(INSERT, insert_parameters(sample_row(number)))


async def hops(url: str, messages: int) -> None:
    """What a worker thread costs: a round trip to one that does nothing."""
    limiter = trio.CapacityLimiter(CONNECTIONS)
    await run_tasks(messages, lambda row: trio.to_thread.run_sync(lambda: None,
                                                                  limiter=limiter))


MODES = {
    "threads": "worker threads + psycopg_pool (the store)",
    "waits": "trio wait_readable/wait_writable on libpq",
    "blocking": "psycopg alone: blocking, one connection, no trio",
    "hops": "a worker-thread round trip alone (no database)",
}


def measure(url: str, mode: str, messages: int) -> tuple[float, float]:
    """(messages per second, CPU microseconds per message) of one run."""
    cpu, wall = time.process_time(), time.perf_counter()
    if mode == "blocking":
        blocking(url, messages)
    else:
        trio.run({"threads": with_threads, "waits": with_waits, "hops": hops}[mode], url,
                 messages)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return messages / wall, cpu * 1e6 / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian package postgresql)")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        url = cluster.create_database("bench")
        migrate_postgresql(url, 10)
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode in results:
                results[mode].append(measure(url, mode, args.messages))
                with psycopg.connect(url, autocommit=True) as connection:
                    connection.execute("TRUNCATE messages CASCADE")
        print(f"{args.messages} messages, {TASKS} tasks, {CONNECTIONS} connections, "
              f"{args.runs} runs (medians)\n")
        print("| driver | msg/s | CPU µs per message (this process) |\n|---|---:|---:|")
        for mode, runs in results.items():
            print(f"| {MODES[mode]} | {statistics.median(r[0] for r in runs):.0f} | "
                  f"{statistics.median(r[1] for r in runs):.0f} |")
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
