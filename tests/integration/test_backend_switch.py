"""
One conversation moves between backends mid-way and keeps working (issue 9, item 9):
openai-chat → gemini (Gemini 3, strict about signatures) → openai-chat → gemini, through one
relay with the anthropic SDK; each upstream gets a history it accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakegemini import PLACEHOLDER, FakeGemini, call_part, chunk, text_chunks, usage
from tests.fakegemini import sse as gemini_sse
from tests.fakeupstream import FakeOpenAI, text_stream, tool_stream
from tests.fakeupstream import chunk as oai_chunk
from tests.fakeupstream import sse as openai_sse
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

KEY = "AIza-switch"
BASH = {"name": "Bash", "description": "Run a command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}


@pytest.fixture()
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeGemini]]:
    openai, gemini = FakeOpenAI().start(), FakeGemini(api_key=KEY).start()
    yield openai, gemini
    openai.stop()
    gemini.stop()


def _dump(message: anthropic.types.Message) -> dict[str, Any]:
    return {"role": "assistant",
            "content": [b.model_dump(exclude_none=True) for b in message.content]}


def _result(message: anthropic.types.Message, output: str) -> dict[str, Any]:
    (use,) = [b for b in message.content if b.type == "tool_use"]
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": use.id, "content": output}]}


def test_openai_then_gemini_then_openai_then_gemini(tmp_path: Any,
                                                    upstreams: tuple[FakeOpenAI, FakeGemini]
                                                    ) -> None:
    openai, gemini = upstreams
    cfg = config_text(
        providers=[{"name": "oai", "kind": "openai-chat", "base_url": openai.url,
                    "options": {"dialect": "deepseek"}},
                   {"name": "gem", "kind": "gemini", "base_url": gemini.ai_studio_url,
                    "api_key": {"env": "TXRELAY_TEST_GEMINI_KEY"}}],
        models=[{"id": "oai-model", "provider": "oai", "upstream_model": "deepseek-chat"},
                {"id": "gem-model", "provider": "gem", "upstream_model": "gemini-3-pro-preview"}])
    relay = start_relay(tmp_path, cfg, env={"TXRELAY_TEST_GEMINI_KEY": KEY})
    try:
        with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
            def turn(model: str, history: list[dict[str, Any]]) -> anthropic.types.Message:
                with c.messages.stream(model=model, max_tokens=200, tools=[BASH],  # type: ignore[list-item]
                                       thinking={"type": "enabled", "budget_tokens": 1024},
                                       messages=history) as stream:
                    return stream.get_final_message()

            history: list[dict[str, Any]] = [{"role": "user", "content": "look around"}]
            # 1. openai-chat (DeepSeek): reasoning + a tool call.
            openai.push(openai_sse([oai_chunk({"role": "assistant", "content": ""}),
                                    oai_chunk({"reasoning_content": "List first."}),
                                    *tool_stream("Bash", json.dumps({"command": "ls"}))[1:]]))
            first = turn("oai-model", history)
            assert first.stop_reason == "tool_use"
            history += [_dump(first), _result(first, "a.py")]

            # 2. gemini: the openai turn has no Gemini signature: the placeholder goes instead.
            gemini.push(gemini_sse([chunk(call_part("Bash", {"command": "cat a.py"},
                                                    signature="c3dpdGNoLTE="),
                                          finish="STOP", usage=usage())]))
            second = turn("gem-model", history)
            sent = gemini.model_requests[-1]
            assert sent.rejected is None, sent.rejected
            foreign = sent.body["contents"][1]["parts"]
            assert [p["thoughtSignature"] for p in foreign] == [PLACEHOLDER]
            assert "txr1" not in json.dumps(sent.body)
            assert second.stop_reason == "tool_use"
            history += [_dump(second), _result(second, "print(1)")]

            # 3. back to openai-chat: Gemini's signature carriers are not sent to DeepSeek.
            openai.push(openai_sse(text_stream("It prints 1.")))
            third = turn("oai-model", history)
            assert third.content[-1].text == "It prints 1."  # type: ignore[union-attr]
            body = json.dumps(openai.requests[-1].body)
            assert "txr1.gem" not in body and "c3dpdGNoLTE=" not in body
            history += [_dump(third), {"role": "user", "content": "once more"}]

            # 4. gemini again: its own signature goes back on its own call.
            gemini.push(gemini_sse(text_chunks("Done.")))
            fourth = turn("gem-model", history)
            assert fourth.content[-1].text == "Done."  # type: ignore[union-attr]
            sent = gemini.model_requests[-1]
            assert sent.rejected is None, sent.rejected
            signed = [p.get("thoughtSignature") for content in sent.body["contents"]
                      for p in content["parts"] if "functionCall" in p]
            assert "c3dpdGNoLTE=" in signed
    finally:
        relay.stop()
