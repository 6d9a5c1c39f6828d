"""
One conversation across every backend kind (issue 9, item 9): openai-chat → gemini →
anthropic → Claude on Vertex AI, through one relay with the anthropic SDK. Each upstream gets
a history it accepts: Gemini (strict about thought signatures) a placeholder for the turn it
did not make, Anthropic no relay-issued signature at all, and Vertex a Google access token
from a service-account file, minted by a fake OAuth token endpoint through google-auth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakeanthropic import FakeAnthropic, frames, raw_stream, text_events
from tests.fakegemini import PLACEHOLDER, FakeGemini, call_part, chunk, usage
from tests.fakegemini import sse as gemini_sse
from tests.fakeupstream import FakeOpenAI, tool_stream
from tests.fakeupstream import chunk as oai_chunk
from tests.fakeupstream import sse as openai_sse
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

GEMINI_KEY = "AIza-three-backends"
ANTHROPIC_KEY = "sk-ant-three-backends"
BASH = {"name": "Bash", "description": "Run a command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}


@pytest.fixture()
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeGemini, FakeAnthropic]]:
    fakes = FakeOpenAI().start(), FakeGemini(api_key=GEMINI_KEY).start(), FakeAnthropic().start()
    yield fakes
    for f in fakes:
        f.stop()


def _dump(message: anthropic.types.Message) -> dict[str, Any]:
    return {"role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content]}


def _result(message: anthropic.types.Message, output: str) -> dict[str, Any]:
    (use,) = [b for b in message.content if b.type == "tool_use"]
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": use.id, "content": output}]}


def test_openai_then_gemini_then_anthropic_then_vertex(
        tmp_path: Path, upstreams: tuple[FakeOpenAI, FakeGemini, FakeAnthropic]) -> None:
    openai, gemini, claude = upstreams
    account = gemini.add_service_account(tmp_path / "vertex-sa.json")
    cfg = config_text(
        providers=[
            {"name": "oai", "kind": "openai-chat", "base_url": openai.url,
             "options": {"dialect": "deepseek"}},
            {"name": "gem", "kind": "gemini", "base_url": gemini.ai_studio_url,
             "api_key": {"env": "TXRELAY_TEST_GEMINI_KEY"}},
            {"name": "ant", "kind": "anthropic", "base_url": claude.url,
             "api_key": {"env": "TXRELAY_TEST_ANT_KEY"}},
            {"name": "vtx", "kind": "anthropic", "base_url": claude.url + "/v1",
             "options": {"api": "vertex", "project": "proj-3", "location": "us-east5",
                         "credentials_file": str(account)}},
        ],
        models=[
            {"id": "oai-model", "provider": "oai", "upstream_model": "deepseek-chat"},
            {"id": "gem-model", "provider": "gem", "upstream_model": "gemini-3-pro-preview"},
            {"id": "ant-model", "provider": "ant", "upstream_model": "claude-upstream-1"},
            {"id": "vtx-model", "provider": "vtx", "upstream_model": "claude-sonnet-4-6"},
        ])
    (tmp_path / "relay").mkdir()
    relay = start_relay(tmp_path / "relay", cfg,
                        env={"TXRELAY_TEST_GEMINI_KEY": GEMINI_KEY,
                             "TXRELAY_TEST_ANT_KEY": ANTHROPIC_KEY})
    try:
        with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
            def turn(model: str, history: list[dict[str, Any]]) -> anthropic.types.Message:
                with c.messages.stream(model=model, max_tokens=2000, tools=[BASH],  # type: ignore[list-item]
                                       thinking={"type": "enabled", "budget_tokens": 1024},
                                       messages=history) as stream:
                    return stream.get_final_message()

            history: list[dict[str, Any]] = [{"role": "user", "content": "look around"}]
            # 1. openai-chat (DeepSeek): reasoning and a tool call.
            openai.push(openai_sse([oai_chunk({"role": "assistant", "content": ""}),
                                    oai_chunk({"reasoning_content": "List first."}),
                                    *tool_stream("Bash", json.dumps({"command": "ls"}))[1:]]))
            first = turn("oai-model", history)
            assert first.stop_reason == "tool_use"
            history += [_dump(first), _result(first, "a.py")]

            # 2. gemini: the openai turn carries no Gemini signature, so the placeholder.
            gemini.push(gemini_sse([chunk(call_part("Bash", {"command": "cat a.py"},
                                                    signature="dGhyZWUtMQ=="),
                                          finish="STOP", usage=usage())]))
            second = turn("gem-model", history)
            sent = gemini.model_requests[-1]
            assert sent.rejected is None, sent.rejected
            assert [p["thoughtSignature"] for p in sent.body["contents"][1]["parts"]] == [
                PLACEHOLDER]
            assert second.stop_reason == "tool_use"
            history += [_dump(second), _result(second, "print(1)")]

            # 3. the Anthropic API: relay-issued signatures (both turns') never reach it, the
            #    tool calls and results stay paired, the provider's key replaces the client's.
            claude.push(raw_stream(frames(text_events("It prints 1."))))
            third = turn("ant-model", history)
            assert third.content[-1].text == "It prints 1."  # type: ignore[union-attr]
            rec = claude.requests[-1]
            body = json.dumps(rec.body)
            assert "txr1" not in body and "dGhyZWUtMQ==" not in body
            uses = [b["id"] for m in rec.body["messages"] if m["role"] == "assistant"
                    for b in m["content"] if b["type"] == "tool_use"]
            answered = [b["tool_use_id"] for m in rec.body["messages"] if m["role"] == "user"
                        and isinstance(m["content"], list)
                        for b in m["content"] if b["type"] == "tool_result"]
            assert len(uses) == 2 and uses == answered
            assert rec.headers["x-api-key"] == ANTHROPIC_KEY
            assert DEMO_KEY not in json.dumps(rec.headers)
            history += [_dump(third), {"role": "user", "content": "and on Vertex?"}]

            # 4. Claude on Vertex AI, authenticated by the service account's access token.
            claude.push(raw_stream(frames(text_events("Same on Vertex."))))
            fourth = turn("vtx-model", history)
            assert fourth.content[-1].text == "Same on Vertex."  # type: ignore[union-attr]
            rec = claude.requests[-1]
            assert rec.path == ("/v1/projects/proj-3/locations/us-east5/publishers/anthropic/"
                                "models/claude-sonnet-4-6:streamRawPredict")
            assert rec.headers["authorization"].startswith("Bearer ya29.fake-access-token-")
            assert "x-api-key" not in rec.headers
            assert rec.body["anthropic_version"] == "vertex-2023-10-16"
            assert "txr1" not in json.dumps(rec.body)
            assert len(gemini.token_requests) == 1
    finally:
        relay.stop()
    # The minted access token is a secret like any other: it never reaches the log.
    token = rec.headers["authorization"].removeprefix("Bearer ")
    assert token not in relay.log()
