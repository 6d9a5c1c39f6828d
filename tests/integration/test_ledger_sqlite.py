"""
The usage ledger on SQLite, end to end: the real relay (twistd) serves SDK requests,
streaming and not, records them in batches, and ``txrelay usage`` adds them up; a locked
database costs records (counted), never requests, and writing resumes once it is free.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.integration.ledgerkit import (
    PRICES,
    check_record,
    check_traffic_rows,
    dropped,
    eventually,
    health,
    one_request,
    recorded_again,
    traffic,
    usage,
    usage_json,
)
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration


def _rows(db: Path, where: str = "1 = 1", params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM txrelay_usage WHERE {where}",
                                              params)]
    finally:
        conn.close()


def test_requests_are_recorded_and_reported(tmp_path: Path) -> None:
    db = tmp_path / "usage.sqlite3"
    relay = start_relay(tmp_path, config_text() + f'\n[ledger]\npath = "{db}"\n' + PRICES)
    try:
        ids = traffic(relay)
    finally:
        relay.stop()  # the stop writes what is still queued
    assert "usage ledger closed: 3 record(s) written, 0 dropped" in relay.log()

    by_id = {r["request_id"]: r for r in _rows(db)}
    check_record(by_id[ids["plain"]], stream=False)
    check_record(by_id[ids["stream"]], stream=True)
    assert by_id[ids["plain"]]["model_requested"] == "claude-sonnet-4-6"
    assert by_id[ids["plain"]]["model_served"] == "claude-sonnet-4-6"
    failed = by_id[ids["error"]]
    assert (failed["status"], failed["error_type"], failed["key_name"]) == (
        404, "not_found_error", "second")

    # From the relay's own configuration, and from the file directly.
    check_traffic_rows(usage_json("--config", str(tmp_path / "relay.toml"), cwd=tmp_path))
    check_traffic_rows(usage_json("--sqlite", str(db), "--today", cwd=tmp_path))
    by_key = usage_json("--sqlite", str(db), "--by", "key", cwd=tmp_path)
    assert [(r["key"], r["requests"]) for r in by_key["rows"]] == [("second", 1), ("tester", 2)]
    assert usage_json("--sqlite", str(db), "--since", "2000-01-01", "--until", "2000-02-01",
                      cwd=tmp_path)["rows"] == []

    shown = usage("--sqlite", str(db), "--by", "key,model", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:4] == ["key", "model", "requests", "errors"]
    tester = next(line.split() for line in lines if "claude-sonnet-4-6" in line)
    assert tester[:4] == ["tester", "claude-sonnet-4-6", "1", "0"]
    assert lines[-1].split()[:3] == ["total", "3", "1"]


def test_usage_cli_problems(tmp_path: Path) -> None:
    missing = usage("--sqlite", str(tmp_path / "none.sqlite3"), cwd=tmp_path)
    assert missing.returncode == 1 and "cannot read the ledger" in missing.stderr
    assert not (tmp_path / "none.sqlite3").exists()  # reading never creates one
    bad = usage("--sqlite", "x", "--by", "colour", cwd=tmp_path)
    assert bad.returncode == 2 and "--by" in bad.stderr
    off = tmp_path / "off.toml"
    off.write_text(config_text())
    result = usage("--config", str(off), cwd=tmp_path)
    assert result.returncode == 1 and "the usage ledger is off" in result.stderr


def test_locked_database_costs_records_not_requests(tmp_path: Path) -> None:
    db = tmp_path / "usage.sqlite3"
    relay = start_relay(tmp_path, config_text() + (
        f'\n[ledger]\npath = "{db}"\nbatch_size = 1\nmax_queue = 2\n'
        "flush_interval = 0.1\n"))
    try:
        first = one_request(relay, "before")
        eventually(lambda: _rows(db, "request_id = ?", (first,)) or None, "the first record")
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the relay's writer cannot get the lock now
        try:
            for i in range(6):
                one_request(relay, f"locked-{i}")
            # At most one batch (1) is being tried and 2 wait: 3 or more were dropped.
            assert dropped(relay) >= 3
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        recorded_again(relay, lambda rid: bool(_rows(db, "request_id = ?", (rid,))))
        status, ready = health(relay)
        assert status == 200 and ready["status"] == "ok"  # the ledger never holds it back
        assert ready["detail"]["ledger"]["kind"] == "sqlite"
        assert ready["detail"]["ledger"]["dropped"] >= 3
    finally:
        relay.stop()
    assert "usage ledger: dropped" in relay.log()


def test_reload_keeps_the_ledger_and_applies_new_prices(tmp_path: Path) -> None:
    db = tmp_path / "usage.sqlite3"
    ledger = f'\n[ledger]\npath = "{db}"\n'
    relay = start_relay(tmp_path, config_text() + ledger + PRICES)
    try:
        before = one_request(relay, "s", model="claude-sonnet-4-6")
        (tmp_path / "relay.toml").write_text(
            config_text() + ledger + "batch_size = 7\n" + PRICES.replace("3.0", "30.0"))
        relay.process.send_signal(signal.SIGHUP)
        eventually(lambda: "configuration generation 1 serves" in relay.log() or None,
                   "the reload")
        after = one_request(relay, "s", model="claude-sonnet-4-6")
    finally:
        relay.stop()
    assert "reload: ledger changed" in relay.log()  # [ledger] itself needs a restart
    # One ledger across the reload: both records written by it, priced by their generation.
    assert "usage ledger closed: 2 record(s) written, 0 dropped" in relay.log()
    old, new = (_rows(db, "request_id = ?", (rid,))[0] for rid in (before, after))
    assert old["input_tokens"] == new["input_tokens"] > 0
    tokens_in, tokens_out = old["input_tokens"], old["output_tokens"]
    assert old["spend_usd"] == pytest.approx((tokens_in * 3.0 + tokens_out * 15.0) / 1e6)
    assert new["spend_usd"] == pytest.approx((tokens_in * 30.0 + tokens_out * 15.0) / 1e6)


def test_a_fallback_is_recorded_with_its_attempts_target_and_pool_key(tmp_path: Path) -> None:
    from tests.fakeupstream import FakeOpenAI, sse, text_stream
    from tests.pgproc import free_port

    upstream = FakeOpenAI().start()
    upstream.default = sse(text_stream("fallback answer", usage={
        "prompt_tokens": 120, "completion_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 100}}))
    db = tmp_path / "usage.sqlite3"
    cfg = config_text(
        providers=[
            {"name": "dead", "kind": "openai-chat",
             "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            {"name": "pool", "kind": "openai-chat", "base_url": upstream.url,
             "api_keys": [{"env": "POOL_KEY", "name": "pool-zero"}]},
        ],
        models=[{"id": "claude-sonnet-4-6", "targets": [
            {"provider": "dead", "upstream_model": "gone", "name": "first"},
            {"provider": "pool", "upstream_model": "model-b", "priority": 1,
             "name": "backup"}], "routing": {"attempts": 2, "breaker": False}}],
    ) + f'\n[ledger]\npath = "{db}"\n' + PRICES
    relay = start_relay(tmp_path, cfg, env={"POOL_KEY": "sk-pool-secret"})
    try:
        with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c, \
                c.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                  messages=[{"role": "user", "content": "hi"}]) as s:
            assert s.get_final_message().content
            rid = s.response.headers["request-id"]
    finally:
        relay.stop()
        upstream.stop()
    [row] = _rows(db, "request_id = ?", (rid,))
    assert (row["attempts"], row["target"], row["upstream_key"]) == (2, "backup", "pool-zero")
    assert (row["provider"], row["model_served"], row["model"]) == (
        "pool", "model-b", "claude-sonnet-4-6")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (20, 100, 9)
    # Priced by the configured model id: input, cache reads at 0.1 x input, output.
    assert row["spend_usd"] == pytest.approx((20 * 3.0 + 100 * 0.3 + 9 * 15.0) / 1e6)
