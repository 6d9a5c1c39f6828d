"""
The tool-hygiene stage end to end: the real relay in front of the fake Chat Completions
server, whose model writes its tool call as Hermes text; the anthropic SDK gets ``tool_use``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, Responder, json_response, sse, text_stream
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

READ = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}},
    "required": ["file_path"]}}
WRITTEN = ('I will read the file.\n<tool_call>\n{"name": "Read", "arguments": '
           '{"file_path": "/etc/hostname"}}\n</tool_call>')


def answer(text: str) -> Responder:
    """A non-streaming Chat Completions answer of ``text``."""
    return json_response({
        "id": "c", "object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}})


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "qwen-fake",
                 "patterns": ["claude-*"]}],
        pipeline=[{"type": "auth"}, {"type": "tool-hygiene"}, {"type": "model-map"},
                  {"type": "translate"}],
    )
    r = start_relay(tmp_path_factory.mktemp("hygiene"), cfg)
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


def test_streaming_client_gets_a_tool_use_block(client: anthropic.Anthropic,
                                                fake: FakeOpenAI, relay: Relay) -> None:
    fake.push(sse(text_stream(WRITTEN, pieces=9)))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=500, tools=[READ],
                                messages=[{"role": "user", "content": "hostname?"}]) as s:
        kinds = [e.type for e in s]
        message = s.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    text, call = message.content
    assert text.text == "I will read the file.\n"  # type: ignore[union-attr]
    assert call.name == "Read" and call.input == {"file_path": "/etc/hostname"}  # type: ignore[union-attr]
    assert call.id.startswith("toolu_01")  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert kinds.count("content_block_start") == 2 and kinds[-1] == "message_stop"
    deadline = time.monotonic() + 5
    while "tool-hygiene made 1 tool call(s) out of text" not in relay.log():
        assert time.monotonic() < deadline, relay.log()[-2000:]
        time.sleep(0.05)
    assert "/etc/hostname" not in relay.log()  # the log names no argument


def test_non_streaming_client_gets_the_same(client: anthropic.Anthropic,
                                            fake: FakeOpenAI) -> None:
    fake.push(answer(WRITTEN))
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=500, tools=[READ],
                                     messages=[{"role": "user", "content": "hostname?"}])
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"file_path": "/etc/hostname"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_the_next_turn_goes_upstream_repaired(client: anthropic.Anthropic,
                                              fake: FakeOpenAI) -> None:
    fake.push(answer("Your host is box."))
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=500, tools=[READ],
        messages=[{"role": "user", "content": "hostname?"},
                  {"role": "assistant", "content": [
                      {"type": "tool_use", "id": "call.0", "name": "Read",
                       "input": {"file_path": "/etc/hostname"}},
                      {"type": "tool_use", "id": "call.1", "name": "Read",
                       "input": {"file_path": "/etc/hosts"}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "call.0", "content": "box"}]}])
    assert message.content[0].text == "Your host is box."  # type: ignore[union-attr]
    sent = fake.requests[-1].body["messages"]
    calls = [c["id"] for c in sent[1]["tool_calls"]]
    answered = [m["tool_call_id"] for m in sent if m["role"] == "tool"]
    assert sorted(calls) == sorted(answered) and "call.0" not in calls
    interrupted = [m for m in sent if m["role"] == "tool" and "interrupted" in
                   json.dumps(m["content"])]
    assert len(interrupted) == 1
