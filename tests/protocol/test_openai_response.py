"""O→A non-streaming translation (mapping.md §3): the same events a stream would produce."""

from __future__ import annotations

import itertools
from typing import Any

import anthropic
import pytest

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.openai import (
    PRESETS,
    OpenAIDialect,
    ToolNameMap,
    chat_response_events,
    parse_chat_response,
)
from txrelay.protocol.openai.request import decode_orx

GENERIC = PRESETS["generic"]


def events_for(body: dict[str, Any], dialect: OpenAIDialect = GENERIC, **kw: Any) -> list[Event]:
    ids = itertools.count(1)
    return chat_response_events(
        body,
        model="claude-test",
        input_tokens=77,
        dialect=dialect,
        message_id="msg_x",
        id_factory=lambda: f"toolu_{next(ids)}",
        signature_factory=lambda: "txr1.oai.fixed",
        **kw,
    )


def message(body: dict[str, Any], dialect: OpenAIDialect = GENERIC, **kw: Any) -> dict[str, Any]:
    events = events_for(body, dialect, **kw)
    grammar = StreamGrammar()
    for e in events:
        grammar.feed(e)
    grammar.close()
    assert all(e["type"] != "ping" for e in events)
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    msg = acc.result()
    anthropic.types.Message.model_validate(msg)  # the SDK's own model accepts it
    return msg


def completion(msg: dict[str, Any], finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", **msg}, "finish_reason": finish}],
        **extra,
    }


def test_mapping_section_3_example() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Reading.",
                    "reasoning_content": "I should open the file.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "Read", "arguments": '{"path":"a.py"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 5000,
            "completion_tokens": 40,
            "total_tokens": 5040,
            "prompt_tokens_details": {"cached_tokens": 4096},
        },
    }
    msg = message(body)
    assert msg["id"] == "msg_x"
    assert msg["model"] == "claude-test"
    assert msg["content"] == [
        {"type": "thinking", "thinking": "I should open the file.", "signature": "txr1.oai.fixed"},
        {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
    ]
    assert msg["stop_reason"] == "tool_use"
    assert msg["stop_sequence"] is None
    assert msg["usage"] == {
        "input_tokens": 904,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4096,
        "output_tokens": 40,
    }


def test_r_o26_block_order_with_openrouter_details() -> None:
    body = completion(
        {
            "content": "Answer",
            "reasoning": "dup text",
            "reasoning_details": [
                {"type": "reasoning.text", "text": "Think.", "signature": "S1", "format": "f"},
                {"type": "reasoning.encrypted", "data": "E", "format": "f"},
            ],
            "tool_calls": [{"id": "c", "function": {"name": "A", "arguments": "{}"}}],
        },
        finish="tool_calls",
    )
    msg = message(body, PRESETS["openrouter"])
    assert [b["type"] for b in msg["content"]] == [
        "thinking",
        "redacted_thinking",
        "text",
        "tool_use",
    ]
    assert msg["content"][0]["thinking"] == "Think."
    assert decode_orx(msg["content"][0]["signature"]) == {
        "type": "reasoning.text",
        "signature": "S1",
        "format": "f",
    }


def test_r_o27_no_empty_or_whitespace_text_block() -> None:
    assert message(completion({"content": ""}))["content"] == []
    assert message(completion({"content": None}))["content"] == []
    msg = message(
        completion(
            {
                "content": "\n\n",
                "tool_calls": [{"id": "c", "function": {"name": "A", "arguments": ""}}],
            },
            finish="tool_calls",
        )
    )
    assert [b["type"] for b in msg["content"]] == ["tool_use"]
    assert msg["content"][0]["input"] == {}


def test_content_as_parts() -> None:
    msg = message(
        completion({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    )
    assert msg["content"] == [{"type": "text", "text": "ab"}]


def test_refusal() -> None:
    msg = message(completion({"content": None, "refusal": "I can't do that."}))
    assert msg["content"] == [{"type": "text", "text": "I can't do that."}]
    assert msg["stop_reason"] == "refusal"


@pytest.mark.parametrize(
    ("arguments", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ("", {}),
        (None, {}),
        ({"a": [1]}, {"a": [1]}),
        ("{'a': True}", {"a": True}),
        ("[1, 2]", {"value": [1, 2]}),
        ('```json\n{"a": 2}\n```', {"a": 2}),
        ("oops", {"_invalid_arguments": "oops"}),
        ('{"a": "trunc', {"a": "trunc"}),
    ],
)
def test_r_o28_arguments(arguments: Any, value: dict[str, Any]) -> None:
    function: dict[str, Any] = {"name": "T"}
    if arguments is not None:
        function["arguments"] = arguments
    msg = message(
        completion(
            {"tool_calls": [{"id": "c", "type": "function", "function": function}]}, "tool_calls"
        )
    )
    assert msg["content"][0]["input"] == value


def test_repeated_upstream_ids_stay_separate_calls() -> None:
    calls = [
        {"id": "call_0", "function": {"name": "A", "arguments": '{"n": 1}'}},
        {"id": "call_0", "function": {"name": "A", "arguments": '{"n": 2}'}},
    ]
    msg = message(completion({"tool_calls": calls}, "tool_calls"))
    assert [b["input"] for b in msg["content"]] == [{"n": 1}, {"n": 2}]
    assert len({b["id"] for b in msg["content"]}) == 2


def test_tool_names_reversed() -> None:
    long_name = "x" * 80
    names = ToolNameMap.from_names([long_name])
    calls = [{"id": "c", "function": {"name": names.upstream(long_name), "arguments": "{}"}}]
    msg = message(completion({"tool_calls": calls}, "tool_calls"), tool_names=names)
    assert msg["content"][0]["name"] == long_name


@pytest.mark.parametrize(
    ("finish", "extra", "stop_reason", "stop_sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "###"}, "stop_sequence", "###"),
        ("stop", {"stop_reason": 128001}, "end_turn", None),
        ("stop", {"matched_stop": "###"}, "stop_sequence", "###"),
        (None, {}, "end_turn", None),
        ("eos", {}, "end_turn", None),
        ("weird", {}, "end_turn", None),
    ],
)
def test_r_m1_stop_reasons(
    finish: str | None, extra: dict[str, Any], stop_reason: str, stop_sequence: str | None
) -> None:
    body = completion({"content": "x"}, finish)
    body["choices"][0].update(extra)
    msg = message(body, stop_sequences=["###"])
    assert (msg["stop_reason"], msg["stop_sequence"]) == (stop_reason, stop_sequence)


def test_length_with_tool_call_is_max_tokens() -> None:
    calls = [{"id": "c", "function": {"name": "W", "arguments": '{"content": "abc'}}]
    msg = message(completion({"tool_calls": calls}, "length"))
    assert msg["stop_reason"] == "max_tokens"
    assert msg["content"][0]["input"] == {"content": "abc"}


def test_usage_missing_is_estimated() -> None:
    msg = message(completion({"content": "x" * 40}))
    assert msg["usage"]["input_tokens"] == 77
    assert msg["usage"]["output_tokens"] == 10


def test_deepseek_usage() -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 900,
        "prompt_cache_miss_tokens": 100,
    }
    msg = message(completion({"content": "x"}, usage=usage))
    assert msg["usage"]["input_tokens"] == 100
    assert msg["usage"]["cache_read_input_tokens"] == 900


def test_no_choices_is_an_empty_message() -> None:
    msg = message({"choices": []})
    assert msg["content"] == []
    assert msg["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"error": {"message": "Rate limit reached", "code": 429}}, "rate_limit_error"),
        ({"object": "error", "message": "bad", "code": 400}, "invalid_request_error"),
        (completion({"content": "x"}, "error"), "api_error"),
        (completion({"content": "x"}, "insufficient_system_resource"), "overloaded_error"),
    ],
)
def test_error_in_a_200_body(body: dict[str, Any], kind: str) -> None:
    events = events_for(body)
    assert events[-1]["type"] == "error"
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    with pytest.raises(RelayError) as info:
        acc.result()
    assert info.value.type == kind


def test_think_tags_in_non_stream_content() -> None:
    msg = message(
        completion({"content": "<think>hmm</think>\n\nHello"}), OpenAIDialect(think_tags=True)
    )
    assert [(b["type"], b.get("thinking") or b.get("text")) for b in msg["content"]] == [
        ("thinking", "hmm"),
        ("text", "Hello"),
    ]


def test_q16_parse_chat_response_strips_whitespace() -> None:
    assert parse_chat_response(b'\n\n  {"choices": []}\n') == {"choices": []}
    for raw in (b"", b"<html>502</html>", b"[1]", b"{bad"):
        with pytest.raises(RelayError) as info:
            parse_chat_response(raw, upstream_name="up")
        assert info.value.type == "api_error"
        assert info.value.message.startswith("up:")
