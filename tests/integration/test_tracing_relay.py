"""
Tracing in the real relay (twistd, console exporter) in front of the fake Chat Completions
upstream: the client's traceparent reaches the upstream in the same trace, and the spans are
exported.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, sse, text_stream
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_the_relay_continues_the_clients_trace_upstream_and_exports_it(tmp: Path) -> None:
    fake = FakeOpenAI().start()
    fake.push(sse(text_stream("Hello there.", pieces=3)))
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "api_key": {"env": "TXRELAY_TEST_UP_KEY"},
                    "options": {"dialect": "openai"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "gpt-fake"}],
    ) + '\n[tracing]\nenabled = true\nexporter = "console"\nservice_name = "relay-test"\n'
    relay = start_relay(tmp, cfg, env={"TXRELAY_TEST_UP_KEY": "sk-upstream-secret"})
    try:
        c = anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)
        with c, c.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                  messages=[{"role": "user", "content": "hi"}],
                                  extra_headers={"traceparent": TRACEPARENT}) as stream:
            text = stream.get_final_text()
        assert text == "Hello there."
        [received] = fake.requests
        version, trace_id, parent_id, _ = received.headers["traceparent"].split("-")
        assert (version, trace_id) == ("00", TRACE_ID)
        assert parent_id != "b7ad6b7169203331"  # the relay's client span, not the client's
    finally:
        relay.stop()  # the stop flushes the batch of spans
        fake.stop()
    log = relay.log()
    for name in ('"name": "POST /v1/messages"', '"name": "auth"', '"name": "model-map"',
                 '"name": "translate"', '"name": "POST"', '"service.name": "relay-test"'):
        assert name in log, name
    assert f"0x{TRACE_ID}" in log
    assert "sk-upstream-secret" not in log and DEMO_KEY not in log
