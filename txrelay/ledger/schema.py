# -*- test-case-name: tests.ledger.test_sqlite -*-
"""
The ledger's tables in SQLite and PostgreSQL, their migrations, and the row of a record.

Pure DB-API code (no Twisted): the relay runs it in a database thread, ``txrelay usage``
and the tests on a plain connection. Every migration is idempotent (``IF NOT EXISTS``), so
two relays starting at once on one database cannot trip over each other; PostgreSQL also
takes an advisory lock for the migration's transaction.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Sequence
from typing import Any

import attrs

from txrelay.ledger.record import RequestRecord

TABLE = "txrelay_usage"
SCHEMA_TABLE = "txrelay_ledger_schema"
#: An arbitrary key for ``pg_advisory_xact_lock`` ("txrelay" in ASCII, as a bigint).
_PG_LOCK = 0x7478_72656C6179

#: The record columns, in insert order.
COLUMNS = (
    "at", "request_id", "operation", "key_name", "session_id", "model_requested", "model",
    "model_served", "provider", "stream", "status", "error_type", "duration_ms", "ttft_ms",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens",
    "thinking_tokens", "spend_usd", "attempts", "target", "upstream_key", "instance",
)


def _v1(at: str, ident: str, real: str, boolean: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            id {ident},
            at {at} NOT NULL,
            request_id TEXT NOT NULL,
            operation TEXT NOT NULL,
            key_name TEXT,
            session_id TEXT,
            model_requested TEXT,
            model TEXT,
            model_served TEXT,
            provider TEXT,
            stream {boolean} NOT NULL,
            status INTEGER NOT NULL,
            error_type TEXT,
            duration_ms {real} NOT NULL,
            ttft_ms {real},
            input_tokens BIGINT,
            output_tokens BIGINT,
            cache_read_tokens BIGINT,
            cache_creation_tokens BIGINT,
            thinking_tokens BIGINT,
            spend_usd {real},
            attempts INTEGER,
            target TEXT,
            upstream_key TEXT,
            instance TEXT
        )""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_key_at ON {TABLE} (key_name, at)",
    )


@attrs.frozen
class Dialect:
    """What differs between the SQL databases the ledger writes to."""

    name: str
    #: The DB-API placeholder (``?`` for sqlite3, ``%s`` for psycopg).
    mark: str
    #: Each schema version's statements; version ``n`` is ``migrations[n - 1]``.
    migrations: tuple[tuple[str, ...], ...]

    def time(self, seconds: float) -> Any:
        """A Unix time as this database stores ``at``."""
        if self.name == "postgres":
            return datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        return seconds

    def insert_sql(self) -> str:
        """The statement inserting one row of :data:`COLUMNS`."""
        marks = ", ".join([self.mark] * len(COLUMNS))
        return f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({marks})"

    def row(self, r: RequestRecord, instance: str) -> tuple[Any, ...]:
        """The values of :data:`COLUMNS` for ``r``."""
        return (
            self.time(r.at), r.request_id, r.operation, r.key, r.session, r.model_requested,
            r.model, r.model_served, r.provider, r.stream if self.name == "postgres"
            else int(r.stream), r.status, r.error_type, round(r.duration * 1000, 3),
            None if r.ttft is None else round(r.ttft * 1000, 3), r.input_tokens,
            r.output_tokens, r.cache_read_tokens, r.cache_creation_tokens, r.thinking_tokens,
            r.spend, r.attempts, r.target, r.upstream_key, instance,
        )


SQLITE = Dialect("sqlite", "?", (_v1("REAL", "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL",
                                      "INTEGER"),))
POSTGRES = Dialect("postgres", "%s", (_v1("TIMESTAMPTZ", "BIGSERIAL PRIMARY KEY",
                                          "DOUBLE PRECISION", "BOOLEAN"),))


def instance_name() -> str:
    """This relay's name in the ``instance`` column: its host name."""
    return socket.gethostname()[:200]


def migrate(cursor: Any, dialect: Dialect) -> int:
    """Bring the schema up to date on ``cursor`` (the caller commits); the version now."""
    if dialect.name == "postgres":
        cursor.execute(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")
    cursor.execute(f"SELECT MAX(version) FROM {SCHEMA_TABLE}")
    found = cursor.fetchone()
    version = int(found[0]) if found and found[0] is not None else 0
    for number, statements in enumerate(dialect.migrations, start=1):
        if number <= version:
            continue
        for statement in statements:
            cursor.execute(statement)
        cursor.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES ({dialect.mark})",
                       (number,))
        version = number
    return version


def insert(cursor: Any, dialect: Dialect, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (from :meth:`Dialect.row`) on ``cursor`` (the caller commits)."""
    cursor.executemany(dialect.insert_sql(), list(rows))


def prune(cursor: Any, dialect: Dialect, before: float) -> int:
    """Delete the records older than the Unix time ``before``; how many went."""
    cursor.execute(f"DELETE FROM {TABLE} WHERE at < {dialect.mark}", (dialect.time(before),))
    return int(cursor.rowcount or 0)
