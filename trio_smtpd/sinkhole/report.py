"""``trio-smtpd report``: what a trap has caught, from the SQLite index or PostgreSQL.

Each view is one SQL query (``VIEWS``, printed by ``--sql`` and in docs/sinkhole.md),
written once for both databases: named parameters (``:since``, ``:limit``) and one
expression that differs (the day of a timestamp). Output is an aligned table or JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .stores import INDEX_NAME, is_postgresql
from .stores.sqlite import connect_readonly

__all__ = ["VIEWS", "report_command", "run_view"]

#: name -> (what it shows, its SQL). ``{day}`` is the day of ``received``, in UTC.
VIEWS: dict[str, tuple[str, str]] = {
    "networks": ("top client networks (/24, /48 for IPv6)", """
        SELECT network, count(*) AS messages, count(DISTINCT peer_ip) AS clients,
               count(DISTINCT helo) AS helo_names, min(received) AS first,
               max(received) AS last
        FROM messages WHERE received >= :since
        GROUP BY network ORDER BY messages DESC, network LIMIT :limit"""),
    "helo": ("top HELO names", """
        SELECT helo, count(*) AS messages, count(DISTINCT network) AS networks
        FROM messages WHERE received >= :since
        GROUP BY helo ORDER BY messages DESC, helo LIMIT :limit"""),
    "senders": ("top sender domains ('' for <>)", """
        SELECT coalesce(sender_domain, '') AS sender_domain, count(*) AS messages,
               count(DISTINCT network) AS networks
        FROM messages WHERE received >= :since
        GROUP BY sender_domain ORDER BY messages DESC, sender_domain LIMIT :limit"""),
    "recipients": ("top trap recipients", """
        SELECT r.address AS recipient, count(*) AS messages,
               count(DISTINCT m.network) AS networks,
               count(DISTINCT m.sender_domain) AS sender_domains
        FROM recipients r JOIN messages m ON m.id = r.message_id
        WHERE m.received >= :since
        GROUP BY r.address ORDER BY messages DESC, recipient LIMIT :limit"""),
    "listings": ("DNSBL and DBL hits", """
        SELECT l.list, l.kind, count(DISTINCT l.message_id) AS messages,
               count(DISTINCT m.peer_ip) AS clients
        FROM listings l JOIN messages m ON m.id = l.message_id
        WHERE m.received >= :since
        GROUP BY l.list, l.kind ORDER BY messages DESC, l.list LIMIT :limit"""),
    "days": ("messages per day (UTC)", """
        SELECT {day} AS day, count(*) AS messages, count(DISTINCT network) AS networks,
               count(DISTINCT peer_ip) AS clients, sum(size) AS octets
        FROM messages WHERE received >= :since
        GROUP BY {day} ORDER BY day DESC LIMIT :limit"""),
}

_DAY = {"sqlite": "substr(received, 1, 10)",
        "postgresql": "to_char(received AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def view_sql(name: str, dialect: str) -> str:
    sql = VIEWS[name][1].replace("{day}", _DAY[dialect])
    if dialect == "postgresql":
        sql = re.sub(r":(\w+)", r"%(\1)s", sql)
    return "\n".join(line.strip() for line in sql.strip().splitlines())


def run_view(connection: Any, dialect: str, name: str, *, since: datetime | None,
             limit: int) -> list[dict[str, Any]]:
    """The rows of one view (``connection``: sqlite3, or psycopg's)."""
    start = since or _EPOCH
    params = {"since": start.isoformat() if dialect == "sqlite" else start, "limit": limit}
    cursor = connection.execute(view_sql(name, dialect), params)
    columns = [d[0] for d in cursor.description]
    return [{c: _plain(v) for c, v in zip(columns, row, strict=True)}
            for row in cursor.fetchall()]


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str):
        return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)  # (PostgreSQL's inet, cidr, Decimal)



# (About 270 years: far enough back for any index, near enough for the calendar.)
_MAX_DAYS = 100_000


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 1 <= days <= _MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{days} is not between 1 and {_MAX_DAYS}")
    return days

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-smtpd report",
        description="What the sinkhole has stored, by client network, HELO name, sender "
                    "domain, recipient, DNSBL listing and day, from the SQLite index or "
                    "PostgreSQL.")
    add = parser.add_argument
    add("--maildir", default="./maildir", metavar="DIR",
        help="the Maildir whose index.sqlite3 to read (default ./maildir)")
    add("--store", default="sqlite", metavar="STORE",
        help="sqlite (the default) or postgresql://... as given to the server")
    add("--view", action="append", choices=sorted(VIEWS), default=None,
        help="which view (repeatable; default: all)")
    add("--days", type=_days, default=None, metavar="N",
        help=f"only the last N days (1 to {_MAX_DAYS})")
    add("--limit", type=int, default=10, metavar="N", help="rows per view (default 10)")
    add("--json", action="store_true", help="one JSON object: view name -> rows")
    add("--sql", action="store_true", help="print each view's SQL instead of running it")
    return parser


def report_command(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    names = args.view or list(VIEWS)
    dialect = "postgresql" if is_postgresql(args.store) else args.store
    if dialect not in _DAY:
        print(f"trio-smtpd report: --store {args.store!r}: expected sqlite or "
              "postgresql://... (the maildir store has no index)", file=sys.stderr)
        return 2
    if args.sql:
        for name in names:
            print(f"-- {name}: {VIEWS[name][0]}\n{view_sql(name, dialect)};\n")
        return 0
    since = None if args.days is None else datetime.now(UTC) - timedelta(days=args.days)
    try:
        results = _gather(args, dialect, names, since)
    except (OSError, sqlite3.Error, ImportError) as exc:
        print(f"trio-smtpd report: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # psycopg's errors, without importing it here
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        print(f"trio-smtpd report: PostgreSQL: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(table(VIEWS[name][0], rows) for name, rows in results.items()))
    return 0


def _gather(args: argparse.Namespace, dialect: str, names: list[str],
            since: datetime | None) -> dict[str, list[dict[str, Any]]]:
    if dialect == "sqlite":
        connection = connect_readonly(Path(args.maildir) / INDEX_NAME)
        try:
            return {n: run_view(connection, dialect, n, since=since, limit=args.limit)
                    for n in names}
        finally:
            connection.close()
    import psycopg

    from .stores.postgresql import connection_options

    with psycopg.connect(args.store, **connection_options(10.0)) as pg:
        return {n: run_view(pg, dialect, n, since=since, limit=args.limit) for n in names}


def table(title: str, rows: list[dict[str, Any]]) -> str:
    """An aligned text table (numbers to the right), under its title."""
    if not rows:
        return f"{title}\n(none)"
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[c], int | float) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([title, line(columns), line(["-" * w for w in widths]),
                      *(line(values) for values in cells)])


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
