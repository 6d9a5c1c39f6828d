# -*- test-case-name: tests.ledger.test_sqlite,tests.integration.test_ledger_postgres -*-
"""
Where the ledger's batches go: SQLite or PostgreSQL, each behind
:class:`twisted.enterprise.adbapi.ConnectionPool` with one connection in one thread (a single
writer), so the reactor never waits on the database.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from txrelay.ledger import schema
from txrelay.ledger.record import RequestRecord

#: Seconds a write waits for a lock (SQLite) or a connection (PostgreSQL) before failing.
DB_TIMEOUT = 5


class _Connection(adbapi.Connection):
    """adbapi's connection, with a rollback that drops a broken connection quietly: the
    interaction's own error reaches the ledger, which logs it (rate-limited); adbapi's
    would log two tracebacks per lost connection."""

    def rollback(self) -> None:
        connection: Any = self._connection
        try:
            connection.rollback()
        except Exception:
            self._pool.disconnect(connection)  # the next write connects again


class _Pool(adbapi.ConnectionPool):
    connectionFactory = _Connection

    def __init__(self, dbapi_name: str, *args: Any, **kw: Any) -> None:
        super().__init__(dbapi_name, *args, **kw)  # type: ignore[no-untyped-call]


class Sink(Protocol):
    """A database the ledger writes batches to."""

    kind: str

    def migrate(self) -> Deferred[Any]:
        """Create or update the schema."""

    def write(self, records: Sequence[RequestRecord]) -> Deferred[Any]:
        """Insert ``records`` in one transaction."""

    def prune(self, before: float) -> Deferred[Any]:
        """Delete the records older than the Unix time ``before``."""

    def close(self) -> None:
        """Release the connection and its thread."""


@attrs.define(eq=False)
class DatabaseSink:
    """A :class:`Sink` over an adbapi pool of one connection."""

    kind: str
    pool: adbapi.ConnectionPool
    dialect: schema.Dialect
    instance: str = attrs.Factory(schema.instance_name)

    def migrate(self) -> Deferred[Any]:
        d: Deferred[Any] = self.pool.runInteraction(schema.migrate, self.dialect)
        return d

    def write(self, records: Sequence[RequestRecord]) -> Deferred[Any]:
        rows = [self.dialect.row(r, self.instance) for r in records]
        d: Deferred[Any] = self.pool.runInteraction(schema.insert, self.dialect, rows)
        return d

    def prune(self, before: float) -> Deferred[Any]:
        d: Deferred[Any] = self.pool.runInteraction(schema.prune, self.dialect, before)
        return d

    def close(self) -> None:
        self.pool.close()


def sqlite_path(path: str, env: Any = None) -> str:
    """``ledger.path`` made absolute: a relative one is under ``$STATE_DIRECTORY`` (systemd's
    ``StateDirectory=``) when set, else the working directory."""
    env = os.environ if env is None else env
    if os.path.isabs(path):
        return path
    base = env.get("STATE_DIRECTORY", "").split(":")[0] or os.getcwd()
    return os.path.join(base, path)


def _sqlite_opened(connection: Any) -> None:
    # WAL: the relay's writes do not block readers (``txrelay usage``) and vice versa.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={DB_TIMEOUT * 1000}")


def sqlite_sink(path: str, reactor: Any) -> DatabaseSink:
    """A sink writing to the SQLite database at ``path``."""
    pool = _Pool(
        "sqlite3", path, timeout=DB_TIMEOUT, check_same_thread=False, cp_min=1, cp_max=1,
        cp_noisy=False, cp_openfun=_sqlite_opened, cp_reactor=reactor)
    return DatabaseSink("sqlite", pool, schema.SQLITE)


def postgres_sink(dsn: str, reactor: Any) -> DatabaseSink:
    """A sink writing to the PostgreSQL database of ``dsn`` (psycopg 3, the ``postgres``
    extra)."""
    import psycopg  # noqa: F401 - fail here, at start-up, when the extra is missing

    pool = _Pool(
        "psycopg", dsn, connect_timeout=DB_TIMEOUT, application_name="txrelay",
        cp_min=1, cp_max=1, cp_noisy=False, cp_reactor=reactor)
    return DatabaseSink("postgres", pool, schema.POSTGRES)
