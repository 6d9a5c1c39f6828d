"""
The usage ledger on a real PostgreSQL server (Debian's, started by :mod:`tests.pgproc`):
the relay records SDK requests through adbapi and psycopg, ``txrelay usage`` reads them
back; a dead server costs records (counted), never requests, and writing resumes when it is
back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.integration.ledgerkit import (
    PRICES,
    check_record,
    check_traffic_rows,
    dropped,
    eventually,
    one_request,
    recorded_again,
    traffic,
    usage,
    usage_json,
)
from tests.pgproc import Postgres, close_postgres, start_postgres
from tests.relayproc import config_text, start_relay
from txrelay.ledger import schema

pytestmark = pytest.mark.integration


@pytest.fixture()
def pg() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    close_postgres(server)


def _config(extra: str = "") -> str:
    return config_text() + ('\n[ledger]\nkind = "postgres"\ndsn = { env = "LEDGER_DSN" }\n'
                            + extra + PRICES)


def _rows(pg: Postgres, where: str = "TRUE", params: tuple[Any, ...] = ()) -> list[Any]:
    try:
        with psycopg.connect(pg.dsn, row_factory=dict_row) as conn:
            return list(conn.execute(f"SELECT * FROM txrelay_usage WHERE {where}", params))
    except psycopg.errors.UndefinedTable:
        return []


def test_requests_are_recorded_in_postgres(pg: Postgres, tmp_path: Path) -> None:
    relay = start_relay(tmp_path, _config(), env={"LEDGER_DSN": pg.dsn})
    try:
        ids = traffic(relay)
    finally:
        relay.stop()
    assert "usage ledger closed: 3 record(s) written, 0 dropped" in relay.log()
    by_id = {r["request_id"]: r for r in _rows(pg)}
    check_record(by_id[ids["plain"]], stream=False)
    check_record(by_id[ids["stream"]], stream=True)
    assert by_id[ids["plain"]]["at"].tzinfo is not None  # timestamptz
    assert by_id[ids["error"]]["error_type"] == "not_found_error"

    check_traffic_rows(usage_json("--dsn", pg.dsn, "--month", cwd=tmp_path))
    check_traffic_rows(usage_json("--config", str(tmp_path / "relay.toml"), cwd=tmp_path,
                                  env={"LEDGER_DSN": pg.dsn}))
    shown = usage("--dsn", pg.dsn, "--by", "model", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1].split()[:3] == ["total", "3", "1"]
    with psycopg.connect(pg.dsn) as conn:  # the schema is versioned
        assert conn.execute("SELECT MAX(version) FROM txrelay_ledger_schema").fetchone() == (1,)
        with conn.cursor() as cur:  # retention's deletion, on timestamptz
            assert schema.prune(cur, schema.POSTGRES, time.time() - 86400) == 0
            assert schema.prune(cur, schema.POSTGRES, time.time() + 60) == 3


def test_dead_postgres_costs_records_not_requests(pg: Postgres, tmp_path: Path) -> None:
    relay = start_relay(tmp_path, _config("batch_size = 1\nmax_queue = 2\n"
                                          "flush_interval = 0.1\n"), env={"LEDGER_DSN": pg.dsn})
    try:
        first = one_request(relay, "before")
        eventually(lambda: _rows(pg, "request_id = %s", (first,)) or None, "the first record")
        pg.stop()
        for i in range(6):
            one_request(relay, f"down-{i}")
        # At most one batch (1) is being tried and 2 wait: 3 or more were dropped.
        assert dropped(relay) >= 3
        pg.start()
        recorded_again(relay, lambda rid: bool(_rows(pg, "request_id = %s", (rid,))))
    finally:
        relay.stop()
    assert "usage ledger: the postgres database fails" in relay.log()
    assert "takes records again" in relay.log()


def test_unreachable_postgres_at_start(tmp_path: Path) -> None:
    from tests.pgproc import free_port

    dsn = f"host=127.0.0.1 port={free_port()} dbname=txrelay user=postgres"
    relay = start_relay(tmp_path, _config("max_queue = 200\n"), env={"LEDGER_DSN": dsn})
    try:
        for i in range(3):
            one_request(relay, f"nobody-home-{i}")
    finally:
        relay.stop()
    assert "usage ledger: the postgres database fails" in relay.log()
    assert "3 dropped" in relay.log()
