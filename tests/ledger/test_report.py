"""``txrelay usage``'s totals: periods, grouping, the table and the secrets of a DSN."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

import pytest

from txrelay.ledger import report, schema
from txrelay.ledger.record import RequestRecord

UTC = datetime.UTC


def test_periods() -> None:
    now = datetime.datetime(2026, 12, 31, 15, 0, tzinfo=UTC)
    assert report.period(today=True, now=now) == report.Period(
        datetime.datetime(2026, 12, 31, tzinfo=UTC), datetime.datetime(2027, 1, 1, tzinfo=UTC))
    assert report.period(month=True, now=now) == report.Period(
        datetime.datetime(2026, 12, 1, tzinfo=UTC), datetime.datetime(2027, 1, 1, tzinfo=UTC))
    p = report.period(since="2026-12-01", until="2026-12-02T12:00:00+01:00")
    assert p.since == datetime.datetime(2026, 12, 1, tzinfo=UTC)
    assert p.until is not None and p.until.utcoffset() == datetime.timedelta(hours=1)
    with pytest.raises(ValueError, match="not a date"):
        report.period(since="yesterday")


def _db(tmp_path: Path) -> sqlite3.Cursor:
    cur = sqlite3.connect(tmp_path / "u.db").cursor()
    schema.migrate(cur, schema.SQLITE)
    day = datetime.datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    records = [
        RequestRecord(day + 10, "a", "messages", 200, 1, key="k1", model_served="m1",
                      input_tokens=10, output_tokens=1, spend=0.25),
        RequestRecord(day + 20, "b", "messages", 200, 1, key="k1", model_served="m2",
                      input_tokens=5, output_tokens=2, cache_read_tokens=100),
        RequestRecord(day + 30, "c", "messages", 429, 1, key="k2", model_served="m1",
                      error_type="rate_limit_error"),
        RequestRecord(day + 86400, "d", "messages", 200, 1, key="k2", model_served="m1",
                      input_tokens=1, output_tokens=1, spend=1.0),
    ]
    schema.insert(cur, schema.SQLITE, [schema.SQLITE.row(r, "h") for r in records])
    return cur


def test_totals_grouped_and_bounded(tmp_path: Path) -> None:
    cur = _db(tmp_path)
    december_first = report.period(since="2026-12-01", until="2026-12-02")
    rows = report.totals(cur, schema.SQLITE, ["key"], december_first)
    assert [(r["key"], r["requests"], r["errors"], r["input_tokens"], r["spend_usd"])
            for r in rows] == [("k1", 2, 0, 15, 0.25), ("k2", 1, 1, 0, None)]
    rows = report.totals(cur, schema.SQLITE, ["model", "key"], report.Period())
    assert [(r["model"], r["key"], r["requests"]) for r in rows] == [
        ("m1", "k1", 1), ("m1", "k2", 2), ("m2", "k1", 1)]
    total = report.grand_total(rows)
    assert total["requests"] == 4 and total["spend_usd"] == 1.25
    assert total["cache_read_tokens"] == 100
    [everything] = report.totals(cur, schema.SQLITE, [], report.Period())
    assert everything["requests"] == 4


def test_table(tmp_path: Path) -> None:
    rows = report.totals(_db(tmp_path), schema.SQLITE, ["key"], report.Period())
    lines = report.table(rows, ["key"]).splitlines()
    assert lines[0].split() == ["key", "requests", "errors", "input", "output", "cache",
                                "read", "cache", "write", "thinking", "spend", "USD"]
    assert lines[2].split() == ["k1", "2", "0", "15", "3", "100", "0", "0", "0.2500"]
    assert lines[-1].split() == ["total", "4", "1", "16", "4", "100", "0", "0", "1.2500"]


def test_dsn_secrets() -> None:
    assert report.dsn_secrets("postgresql://u:s3cret@db/x") == [
        "postgresql://u:s3cret@db/x", "s3cret"]
    assert report.dsn_secrets("host=db password='a b' user=u")[1] == "a b"
    assert report.dsn_secrets("host=db") == ["host=db"]
