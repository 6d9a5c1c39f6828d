"""Helpers of the usage ledger's integration tests: requests, the CLI, waiting for rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anthropic

from tests.relayproc import DEMO_KEY, SECOND_KEY, Relay

T = TypeVar("T")

PRICES = """
[[prices]]
model = "claude-sonnet-*"
input = 3.0
output = 15.0
"""


def traffic(relay: Relay) -> dict[str, str]:
    """A known mix of requests: the request id of each, by what it was."""
    ids: dict[str, str] = {}
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        raw = c.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=100,
            messages=[{"role": "user", "content": "hello ledger"}],
            extra_headers={"X-Claude-Code-Session-Id": "session-one"})
        ids["plain"] = raw.headers["request-id"]
        with c.messages.stream(model="demo-small", max_tokens=100,
                               messages=[{"role": "user", "content": "stream it"}],
                               extra_headers={"X-Claude-Code-Session-Id": "session-one"}) as s:
            s.get_final_message()
            ids["stream"] = s.response.headers["request-id"]
    with anthropic.Anthropic(base_url=relay.url, api_key=SECOND_KEY, max_retries=0) as c:
        try:
            c.messages.create(model="no-such-model", max_tokens=10,
                              messages=[{"role": "user", "content": "x"}])
        except anthropic.NotFoundError as e:
            ids["error"] = e.response.headers["request-id"]
        else:
            raise AssertionError("an unknown model was served")
    return ids


def one_request(relay: Relay, session: str, model: str = "demo-small") -> str:
    """A non-streaming request; its request id."""
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        raw = c.messages.with_raw_response.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Claude-Code-Session-Id": session})
        assert raw.http_response.status_code == 200
        return str(raw.headers["request-id"])


def usage(*args: str, cwd: Path,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``txrelay usage ARGS`` with this interpreter."""
    return subprocess.run([sys.executable, "-m", "txrelay", "usage", *args],
                          check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=120,
                          env={**os.environ, **(env or {})})


def usage_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = usage(*args, "--format", "json", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def dropped(relay: Relay) -> float:
    """``txrelay_ledger_dropped_total`` of the relay's /metrics."""
    with urllib.request.urlopen(f"{relay.url}/metrics", timeout=30) as r:
        text = r.read().decode()
    m = re.search(r"^txrelay_ledger_dropped_total (\S+)$", text, re.M)
    assert m is not None, text
    return float(m.group(1))


def health(relay: Relay) -> tuple[int, dict[str, Any]]:
    """``GET /health/ready``: its status and body."""
    try:
        with urllib.request.urlopen(f"{relay.url}/health/ready", timeout=30) as r:
            return r.status, dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        return e.code, dict(json.loads(e.read()))


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """Poll ``probe`` until it gives a value (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def recorded_again(relay: Relay, recorded: Callable[[str], bool]) -> str:
    """
    Once the database is back: send requests until one of them is recorded; its id. (The
    first ones may still find the queue full of what waited, and be dropped.)
    """
    sent: list[str] = []

    def probe() -> str | None:
        sent.append(one_request(relay, f"after-{len(sent)}"))
        return next((rid for rid in sent if recorded(rid)), None)

    return eventually(probe, "a record after the database came back")


def check_traffic_rows(report: dict[str, Any]) -> None:
    """What :func:`traffic` must add up to, grouped by key and model."""
    rows = {(r["key"], r["model"]): r for r in report["rows"]}
    plain = rows[("tester", "claude-sonnet-4-6")]
    assert plain["requests"] == 1 and plain["errors"] == 0
    assert plain["input_tokens"] > 0 and plain["output_tokens"] > 0
    assert plain["spend_usd"] is not None and plain["spend_usd"] > 0
    expected = (plain["input_tokens"] * 3.0 + plain["output_tokens"] * 15.0) / 1e6
    assert abs(plain["spend_usd"] - expected) < 1e-9
    stream = rows[("tester", "demo-small")]
    assert stream["requests"] == 1 and stream["output_tokens"] > 0
    assert stream["spend_usd"] is None  # no price matches demo-small
    failed = rows[("second", "no-such-model")]
    assert failed["requests"] == 1 and failed["errors"] == 1
    assert report["total"]["requests"] == 3 and report["total"]["errors"] == 1


def check_record(row: dict[str, Any], *, stream: bool) -> None:
    """One request's columns, as the ledger wrote them."""
    assert row["key_name"] == "tester" and row["session_id"] == "session-one"
    assert row["provider"] == "demo" and row["status"] == 200
    assert row["operation"] == "messages" and bool(row["stream"]) is stream
    assert row["duration_ms"] >= 0 and row["instance"]
    assert (row["ttft_ms"] is not None) is stream
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
