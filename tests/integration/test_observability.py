"""Issue 11.6/11.7 with real processes: JSON logs under twistd and serve, the access line,
and the metrics an operator reads (first byte/token, upstream errors, drain, bounded labels)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import anthropic
import pytest

from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

SESSION = "0b7d5c3e-claude-code-session"
BODY_TEXT = "a message body that must never reach the log"
ENV = {"TXRELAY_TEST_DEAD_KEY": "sk-dead-upstream-key"}


def _config(fmt: str = "json") -> str:
    return config_text(
        providers=[{"name": "demo", "kind": "demo"},
                   {"name": "dead", "kind": "openai-chat",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key": {"env": "TXRELAY_TEST_DEAD_KEY"},
                    "timeouts": {"connect": 2, "first_byte": 5, "idle": 3}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "demo", "aliases": ["sonnet"]},
                {"id": "dead-model", "provider": "dead"}],
    ) + f'\n[log]\nlevel = "info"\nformat = "{fmt}"\n'


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_json_lines_and_the_access_line(tmp_path: Path, serve: bool) -> None:
    relay = start_relay(tmp_path, _config(), serve=serve, env=ENV)
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0,
                                default_headers={"X-Claude-Code-Session-Id": SESSION})
        with c.messages.stream(model="sonnet", max_tokens=50,
                               messages=[{"role": "user", "content": BODY_TEXT}]) as s:
            final = s.get_final_message()
        c.messages.create(model="sonnet", max_tokens=5,
                          messages=[{"role": "user", "content": BODY_TEXT}])
    finally:
        code = relay.stop()
    assert code == 0
    text = relay.log()
    # Every line, twistd's own start-up lines included, is one JSON object.
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert events and all(isinstance(e, dict) for e in events)
    access = [e for e in events if str(e.get("request_id", "")).startswith("req_")
              and "duration_ms" in e]
    assert len(access) == 2
    streamed, plain = access
    for e in access:
        assert e["client"] == "tester" and e["session_id"] == SESSION
        assert e["model"] == "sonnet" and e["served_model"] == "claude-sonnet-4-6"
        assert e["provider"] == "demo" and e["status"] == 200
        assert e["input_tokens"] > 0 and e["output_tokens"] > 0
    assert streamed["stream"] is True and plain["stream"] is False
    assert streamed["output_tokens"] == final.usage.output_tokens
    assert streamed["input_tokens"] == final.usage.input_tokens
    assert 0 <= streamed["ttft_ms"] <= streamed["duration_ms"]
    assert plain["ttft_ms"] is None
    assert DEMO_KEY not in text and BODY_TEXT not in text
    assert "sk-dead-upstream-key" not in text


def test_operator_metrics(tmp_path: Path) -> None:
    relay = start_relay(tmp_path, _config("text"), env=ENV)
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        with c.messages.stream(model="sonnet", max_tokens=50,
                               messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()
        c.messages.create(model="demo/some-unconfigured-model-name", max_tokens=5,
                          messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.APIStatusError):
            c.messages.create(model="dead-model", max_tokens=5,
                              messages=[{"role": "user", "content": "x"}])
        text = _metrics(relay.url)
    finally:
        relay.stop()
    assert _sample(text, "txrelay_first_token_seconds_count", provider="demo",
                   model="claude-sonnet-4-6") == 1
    assert _sample(text, "txrelay_upstream_first_byte_seconds_count", provider="demo") == 2
    assert _sample(text, "txrelay_upstream_errors_total", provider="dead") == 1
    assert _sample(text, "txrelay_upstream_errors_total", provider="demo") == 0
    assert _sample(text, "txrelay_draining") == 0
    assert "txrelay_draining 0.0" in text
    # A name no configured model claims is counted, but never becomes a label value.
    assert _sample(text, "txrelay_requests_total", model="other", provider="demo") == 1
    assert "some-unconfigured-model-name" not in text


def test_opt_in_body_log_is_capped_and_redacted(tmp_path: Path) -> None:
    cfg = _config("json").replace('format = "json"\n', 'format = "json"\nbody_bytes = 300\n')
    relay = start_relay(tmp_path, cfg, env=ENV)
    pasted = "sk-ant-api03-" + "Q" * 40
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        c.messages.create(model="sonnet", max_tokens=5, messages=[{
            "role": "user",
            "content": f"keys: {pasted} sk-dead-upstream-key " + "tail" * 500}])
    finally:
        relay.stop()
    text = relay.log()
    bodies = [e for e in map(json.loads, filter(str.strip, text.splitlines()))
              if "body" in e and str(e.get("request_id", "")).startswith("req_")]
    assert len(bodies) == 1
    body = bodies[0]["body"]
    assert body.startswith('{"') and '"role"' in body and "[REDACTED]" in body
    assert "more bytes)" in body and len(body.encode()) < 400
    assert pasted not in text and "sk-dead-upstream-key" not in text and DEMO_KEY not in text
