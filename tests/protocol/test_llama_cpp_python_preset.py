"""
The ``llama-cpp-python`` dialect preset (issue 7.17), checked against what that server's
request models accept (llama_cpp/llama_types.py and llama_cpp/server/types.py): assistant
``content`` is ``NotRequired[str]``, system and tool ``content`` are strings,
``response_format`` takes only ``text``/``json_object``, and ``tool_choice:"required"`` is
ignored by its chat formatters (an assertion error in ``chatml-function-calling``), while a
named tool is grammar-constrained and ``"auto"`` must be explicit there.
"""

from __future__ import annotations

from typing import Any

import pytest

from txrelay.protocol.anthropic import MessagesRequest, request_from_json
from txrelay.protocol.openai import PRESETS, build_chat_request

LCP = PRESETS["llama-cpp-python"]
READ = {"name": "Read", "input_schema": {"type": "object", "properties": {"p": {}}}}
GREP = {"name": "Grep", "input_schema": {"type": "object", "properties": {"q": {}}}}


def req(**body: Any) -> MessagesRequest:
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("max_tokens", 1024)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return request_from_json(body)


def build(request: MessagesRequest, *, stream: bool = True) -> dict[str, Any]:
    body = build_chat_request(
        request, upstream_model="m", dialect=LCP, max_output_tokens=None, stream=stream
    )
    assert_accepted(body)
    return body


def assert_accepted(body: dict[str, Any]) -> None:
    """The parts of llama-cpp-python's request models this translation can get wrong."""
    assert body.get("tool_choice") != "required"
    assert "parallel_tool_calls" not in body
    fmt = body.get("response_format")
    assert fmt is None or fmt["type"] in ("text", "json_object")
    for msg in body["messages"]:
        role = msg["role"]
        if role == "assistant":
            assert isinstance(msg.get("content", ""), str), msg
        elif role in ("system", "tool"):
            assert msg["content"] is None or isinstance(msg["content"], str), msg
        else:
            content = msg["content"]
            assert isinstance(content, str) or all(
                p["type"] in ("text", "image_url") for p in content
            ), msg


def test_assistant_tool_call_turn_has_empty_string_content() -> None:
    messages = [
        {"role": "user", "content": "read it"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": 1}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ]
    body = build(req(messages=messages, tools=[READ]))
    assistant = body["messages"][1]
    assert assistant["content"] == ""
    assert assistant["tool_calls"][0]["function"]["name"] == "Read"


def test_any_with_one_tool_forces_that_tool() -> None:
    body = build(req(tools=[READ], tool_choice={"type": "any"}))
    assert body["tool_choice"] == {"type": "function", "function": {"name": "Read"}}
    assert [t["function"]["name"] for t in body["tools"]] == ["Read"]


def test_any_with_several_tools_is_auto(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="txrelay.protocol.openai"):
        body = build(req(tools=[READ, GREP], tool_choice={"type": "any"}))
    assert body["tool_choice"] == "auto"
    assert len(body["tools"]) == 2
    assert "ignores" in caplog.text


def test_named_tool_is_the_object_form() -> None:
    body = build(req(tools=[READ, GREP], tool_choice={"type": "tool", "name": "Grep"}))
    assert body["tool_choice"] == {"type": "function", "function": {"name": "Grep"}}
    assert len(body["tools"]) == 2


def test_tools_without_tool_choice_send_auto_explicitly() -> None:
    assert build(req(tools=[READ]))["tool_choice"] == "auto"
    assert "tool_choice" not in build(req())


def test_none_disable_parallel_and_other_fields() -> None:
    assert build(req(tools=[READ], tool_choice={"type": "none"}))["tool_choice"] == "none"
    body = build(
        req(
            tools=[READ],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            top_k=20,
            output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
        )
    )
    assert body["top_k"] == 20
    assert "response_format" not in body
    assert "stream_options" not in body  # its streams never carry usage


def test_generic_dialect_keeps_required() -> None:
    body = build_chat_request(
        req(tools=[READ, GREP], tool_choice={"type": "any"}),
        upstream_model="m",
        dialect=PRESETS["generic"],
        max_output_tokens=None,
        stream=False,
    )
    assert body["tool_choice"] == "required"
    assert "tool_choice" not in build_chat_request(
        req(tools=[READ]),
        upstream_model="m",
        dialect=PRESETS["generic"],
        max_output_tokens=None,
        stream=False,
    )
