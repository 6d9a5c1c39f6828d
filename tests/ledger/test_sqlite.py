"""
The schema, its migration and the inserts on a real SQLite file, and the sink through
adbapi's thread (the reactor runs in the integration tests; here the DB-API code runs on a
plain connection).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from txrelay.ledger import schema
from txrelay.ledger.record import RequestRecord
from txrelay.ledger.sinks import sqlite_path


def test_migrate_is_idempotent_and_rows_round_trip(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "u.db")
    cur = conn.cursor()
    assert schema.migrate(cur, schema.SQLITE) == 1
    assert schema.migrate(cur, schema.SQLITE) == 1
    conn.commit()
    assert cur.execute("SELECT COUNT(*) FROM txrelay_ledger_schema").fetchone() == (1,)
    r = RequestRecord(1.7e9, "req_1", "messages", 200, 0.25, key="k", session="s",
                      model_requested="sonnet", model="claude-sonnet-4-6",
                      model_served="up-model", provider="p", stream=True, ttft=0.05,
                      input_tokens=10, output_tokens=20, thinking_tokens=4, spend=0.5,
                      attempts=2, target="p/up-model", upstream_key="pool-1")
    schema.insert(cur, schema.SQLITE, [schema.SQLITE.row(r, "host-a")])
    conn.commit()
    cur.execute(f"SELECT {', '.join(schema.COLUMNS)} FROM txrelay_usage")
    assert cur.fetchone() == (1.7e9, "req_1", "messages", "k", "s", "sonnet",
                              "claude-sonnet-4-6", "up-model", "p", 1, 200, None, 250.0,
                              50.0, 10, 20, None, None, 4, 0.5, 2, "p/up-model", "pool-1",
                              "host-a")


def test_sqlite_path() -> None:
    assert sqlite_path("/abs/u.db", {}) == "/abs/u.db"
    assert sqlite_path("u.db", {"STATE_DIRECTORY": "/var/lib/txrelay:/other"}) == (
        "/var/lib/txrelay/u.db")


def test_prune_deletes_only_older_records(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "u.db")
    cur = conn.cursor()
    schema.migrate(cur, schema.SQLITE)
    rows = [schema.SQLITE.row(RequestRecord(at, f"r{at}", "messages", 200, 0.1), "h")
            for at in (100.0, 200.0, 300.0)]
    schema.insert(cur, schema.SQLITE, rows)
    assert schema.prune(cur, schema.SQLITE, 250.0) == 2
    assert cur.execute("SELECT request_id FROM txrelay_usage").fetchall() == [("r300.0",)]
