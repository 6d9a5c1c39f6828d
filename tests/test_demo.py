"""The demo model: deterministic, grammatical, tool-capable, honours limits."""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.anthropic import request_from_json
from txrelay.protocol.demo import demo_events
from txrelay.protocol.events import StreamGrammar

WRITE = {"name": "Write", "input_schema": {
    "type": "object", "additionalProperties": False,
    "properties": {"file_path": {"type": "string"}, "content": {"type": "string"},
                   "mode": {"enum": ["w", "a"]}, "n": {"type": "integer"}},
    "required": ["file_path", "content", "mode", "n"]}}


def answer(body: dict[str, Any]) -> dict[str, Any]:
    req = request_from_json({"model": "m", "max_tokens": 500, **body})
    events = demo_events(req, model="asked", message_id="msg_x", input_tokens=11)
    grammar, acc = StreamGrammar(), MessageAccumulator()
    for e in events:
        grammar.feed(e)
        acc.feed(e)
    grammar.close()
    return acc.result()


def test_plain_answer_is_several_deltas_and_echoes_the_model() -> None:
    req = request_from_json({"model": "m", "max_tokens": 500,
                             "messages": [{"role": "user", "content": "tell me things"}]})
    events = demo_events(req, model="asked", message_id="msg_x", input_tokens=11)
    assert sum(e["type"] == "content_block_delta" for e in events) >= 3
    msg = answer({"messages": [{"role": "user", "content": "tell me things"}]})
    assert msg["model"] == "asked" and msg["stop_reason"] == "end_turn"
    assert "tell me things" in msg["content"][0]["text"]


def test_named_tool_is_called_with_schema_valid_input() -> None:
    msg = answer({"tools": [WRITE], "messages": [
        {"role": "user", "content": "Please use the Write tool to create hello.txt"}]})
    assert msg["stop_reason"] == "tool_use"
    call = msg["content"][-1]
    assert call["name"] == "Write"
    assert call["input"] == {"file_path": "demo.txt", "content": call["input"]["content"],
                             "mode": "w", "n": 1}
    assert call["id"].startswith("toolu_")


def test_no_tool_when_not_named_or_choice_none() -> None:
    assert answer({"tools": [WRITE], "messages": [
        {"role": "user", "content": "just chat"}]})["stop_reason"] == "end_turn"
    assert answer({"tools": [WRITE], "tool_choice": {"type": "none"}, "messages": [
        {"role": "user", "content": "use Write"}]})["stop_reason"] == "end_turn"
    forced = answer({"tools": [WRITE], "tool_choice": {"type": "any"}, "messages": [
        {"role": "user", "content": "just chat"}]})
    assert forced["stop_reason"] == "tool_use"


def test_finishes_after_the_tool_result() -> None:
    msg = answer({"tools": [WRITE], "messages": [
        {"role": "user", "content": "use Write"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_9", "name": "Write", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_9", "content": "File created"}]},
    ]})
    assert msg["stop_reason"] == "end_turn"
    assert "The Write tool returned: File created" in msg["content"][0]["text"]


def test_thinking_first_when_enabled() -> None:
    msg = answer({"thinking": {"type": "adaptive"},
                  "messages": [{"role": "user", "content": "hi"}]})
    assert msg["content"][0]["type"] == "thinking" and msg["content"][0]["signature"]


def test_stop_sequence_and_max_tokens() -> None:
    msg = answer({"stop_sequences": ["demo"], "messages": [{"role": "user", "content": "x"}]})
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "demo"
    assert "demo" not in msg["content"][0]["text"]
    short = answer({"max_tokens": 3, "messages": [{"role": "user", "content": "x"}]})
    assert short["stop_reason"] == "max_tokens"
    # The translate stage answers max_tokens 0 itself; the demo model copes with it anyway.
    zero = attrs.evolve(request_from_json({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "x"}]}), max_tokens=0)
    acc = MessageAccumulator()
    for e in demo_events(zero, model="asked", message_id="msg_x", input_tokens=11):
        acc.feed(e)
    empty = acc.result()
    assert empty["content"] == [] and empty["stop_reason"] == "max_tokens"


@given(st.text(max_size=300), st.booleans(), st.integers(1, 100))
def test_any_prompt_gives_a_grammatical_stream(prompt: str, think: bool, limit: int) -> None:
    body: dict[str, Any] = {"max_tokens": limit, "tools": [WRITE],
                            "messages": [{"role": "user", "content": prompt or "x"}]}
    if think:
        body["thinking"] = {"type": "adaptive"}
    msg = answer(body)
    json.dumps(msg)
    assert msg["usage"]["output_tokens"] >= 0


def test_paths_and_commands_come_from_the_prompt() -> None:
    msg = answer({"tools": [WRITE], "messages": [
        {"role": "user", "content": "Use Write to create /tmp/demo-dir/hello.txt."}]})
    assert msg["content"][-1]["input"]["file_path"] == "/tmp/demo-dir/hello.txt"
    bash = {"name": "Bash", "input_schema": {"type": "object", "properties": {
        "command": {"type": "string"}}, "required": ["command"]}}
    msg = answer({"tools": [bash], "messages": [
        {"role": "user", "content": "Run `ls -la` with the Bash tool"}]})
    assert msg["content"][-1]["input"] == {"command": "ls -la"}
