"""The request validator: every block type, ranges, caps, nesting; plain-words messages."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from txrelay.protocol.anthropic import parse_request, request_from_json
from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import JSONDecodeError, JSONEncodeError, dumps, loads
from txrelay.protocol.validate import MAX_DEPTH, MAX_PROBLEMS, validate_request

BASE: dict[str, Any] = {"model": "m", "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}]}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def with_blocks(*blocks: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return {**BASE, "messages": [{"role": role, "content": list(blocks)}]}


def problem(body: dict[str, Any], *, count: bool = False) -> str:
    with pytest.raises(RelayError) as info:
        request_from_json(body, count_tokens=count)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    message = info.value.message
    # Plain words: no Python reprs, no exception names.
    assert not re.search(r"\{'|\['|Error\b|Traceback|<class", message), message
    return message


EVERY_BLOCK: list[dict[str, Any]] = [
    {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"},
     "citations": [{"type": "char_location", "cited_text": "x"}]},
    {"type": "image", "source": PNG},
    {"type": "image", "source": {"type": "url", "url": "https://e.x/a.png"}},
    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                    "data": "JVBERi0="}, "title": "t", "context": None},
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
    {"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "a"}, {"type": "image", "source": PNG}]}},
    {"type": "document", "source": {"type": "content", "content": "plain"}},
    {"type": "document", "source": {"type": "url", "url": "https://e.x/a.pdf"}},
    {"type": "document", "source": {"type": "file", "file_id": "file_2"},
     "citations": {"enabled": True}},
    {"type": "search_result", "source": "s", "title": "t",
     "content": [{"type": "text", "text": "r"}]},
    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
    {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": [
        {"type": "text", "text": "no"}, {"type": "image", "source": PNG},
        {"type": "tool_reference", "tool_name": "Read"}]},
    {"type": "tool_result", "tool_use_id": "t3"},
    {"type": "container_upload", "file_id": "file_3"},
]
ASSISTANT_BLOCKS: list[dict[str, Any]] = [
    {"type": "thinking", "thinking": "hm", "signature": "sig"},
    {"type": "redacted_thinking", "data": "abc"},
    {"type": "text", "text": "ok"},
    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "/a"}},
    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": "x"}},
    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
        {"type": "web_search_result", "url": "u", "title": "t", "encrypted_content": "e"}]},
    {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_2",
     "content": {"type": "web_fetch_tool_result_error", "error_code": "unavailable"}},
]


def test_every_block_type_of_the_schema_passes() -> None:
    body = {**BASE, "messages": [
        {"role": "user", "content": EVERY_BLOCK},
        {"role": "assistant", "content": ASSISTANT_BLOCKS},
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
    ]}
    req = request_from_json(body)
    assert [len(m.blocks()) for m in req.messages] == [len(EVERY_BLOCK), len(ASSISTANT_BLOCKS), 1]


def test_everything_else_of_the_schema_passes() -> None:
    body = {
        **BASE, "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "stream": True, "stop_sequences": ["END"], "temperature": 0, "top_p": 1, "top_k": 0,
        "tools": [
            {"name": "Read", "description": "d", "input_schema": {"type": "object"},
             "cache_control": {"type": "ephemeral"}, "strict": True},
            {"type": "custom", "name": "Other", "input_schema": {}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            {"type": "bash_20250124", "name": "bash"},
        ],
        "tool_choice": {"type": "tool", "name": "Read", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 2048, "display": "omitted"},
        "metadata": {"user_id": None},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {}}},
        "cache_control": {"type": "ephemeral"}, "context_management": {"edits": []},
    }
    req = request_from_json(body)
    assert req.extra == {"cache_control": {"type": "ephemeral"},
                         "context_management": {"edits": []}}
    assert req.temperature == 0.0 and req.top_k == 0 and req.stream


@pytest.mark.parametrize("body, expected", [
    # Ranges (7.13) and finiteness.
    ({**BASE, "max_tokens": -1}, "max_tokens: must be greater than or equal to 0, got -1"),
    ({**BASE, "max_tokens": 2**40}, "max_tokens: must be at most 2147483647"),
    ({**BASE, "temperature": -7}, "temperature: must be between 0 and 1, got -7"),
    ({**BASE, "temperature": 1.5}, "temperature: must be between 0 and 1, got 1.5"),
    ({**BASE, "temperature": float("nan")}, "temperature: must be a finite number"),
    ({**BASE, "top_p": float("inf")}, "top_p: must be a finite number"),
    ({**BASE, "top_p": "0.5"}, "top_p: expected a number, got a string"),
    ({**BASE, "temperature": -(10**4000)}, "temperature: must be between 0 and 1, got an integer"),
    ({**BASE, "top_k": 10**4000}, "top_k: must be at most 2147483647"),
    ({**BASE, "top_k": -1}, "top_k: must be greater than or equal to 0, got -1"),
    # Sizes.
    ({**BASE, "model": "m" * 300}, "model: must be at most 256 characters long, got 300"),
    ({**BASE, "model": ""}, "model: must not be empty"),
    ({**BASE, "stop_sequences": ["x"] * 300}, "stop_sequences: at most 256 are allowed"),
    ({**BASE, "stop_sequences": ["x", 3]}, "stop_sequences.1: expected a string, got an integer"),
    ({**BASE, "tools": [{"name": "t", "input_schema": {}}] * 1001}, "tools: at most 1000"),
    # The shapes issue 8 found crashing the relay.
    (with_blocks({"type": "image", "source": "aGk="}),
     "messages.0.content.0.source: expected an object, got a string"),
    ({**BASE, "thinking": {"type": {"x": 1}}},
     "thinking.type: expected a string, got an object"),
    ({**BASE, "tool_choice": {"type": {"x": 1}}},
     "tool_choice.type: expected a string, got an object"),
    ({**BASE, "tool_choice": {"type": "maybe"}},
     'tool_choice.type: expected one of auto, any, tool, none, got "maybe"'),
    ({**BASE, "tool_choice": {"type": "tool"}}, "tool_choice.name: field required"),
    ({**BASE, "thinking": {"type": "enabled", "budget_tokens": "8k"}},
     "thinking.budget_tokens: expected an integer, got a string"),
    (with_blocks({"type": "text", "text": 5}),
     "messages.0.content.0.text: expected a string, got an integer"),
    (with_blocks({"type": "tool_result", "tool_use_id": "t", "content": 5}),
     "messages.0.content.0.content: expected a string or an array, got an integer"),
    (with_blocks({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "thinking"}]}),
     'messages.0.content.0.content.0.type: unknown content block type "thinking" here'),
    (with_blocks({"type": "tool_use", "id": "t", "name": "n", "input": []}),
     "messages.0.content.0.input: expected an object, got an array"),
    (with_blocks({"type": "image", "source": {"type": "base64", "media_type": "image/bmp",
                                              "data": ""}}),
     'messages.0.content.0.source.media_type: expected one of image/jpeg, image/png, '
     'image/gif, image/webp, got "image/bmp"'),
    (with_blocks({"type": "image", "source": {"type": "ftp"}}),
     'messages.0.content.0.source.type: expected one of base64, url, file, got "ftp"'),
    (with_blocks({"type": "document", "source": {"type": "content", "content": 1}}),
     "messages.0.content.0.source.content: expected a string or an array"),
    (with_blocks({"type": "search_result", "source": "s", "title": "t", "content": "x"}),
     "messages.0.content.0.content: expected an array, got a string"),
    (with_blocks({"type": "text", "text": "x", "cache_control": "yes"}),
     "messages.0.content.0.cache_control: expected an object, got a string"),
    (with_blocks({"type": "web_search_tool_result", "tool_use_id": "s", "content": "x"}),
     "messages.0.content.0.content: expected an object or an array, got a string"),
    (with_blocks({"type": "hologram"}),
     'messages.0.content.0.type: unknown content block type "hologram" here; expected one of'),
    (with_blocks({"type": 7}), "messages.0.content.0.type: expected a string, got an integer"),
    (with_blocks("text"), "messages.0.content.0: expected an object, got a string"),
    ({**BASE, "messages": [{"role": "system", "content": [{"type": "image", "source": PNG}]}]},
     'messages.0.content.0.type: unknown content block type "image" here; expected one of text'),
    ({**BASE, "messages": [{"role": {"r": 1}, "content": "x"}]},
     "messages.0.role: expected a string, got an object"),
    ({**BASE, "tools": [{"name": "", "input_schema": {}}]}, "tools.0.name: must not be empty"),
    ({**BASE, "tools": [{"type": 5}]}, "tools.0.type: expected a string, got an integer"),
    ({**BASE, "tools": ["Read"]}, "tools.0: expected an object, got a string"),
    ({**BASE, "metadata": {"user_id": 5}}, "metadata.user_id: expected a string, got an integer"),
    ({**BASE, "output_config": {"effort": "ultra"}}, 'output_config.effort: expected one of'),
    ({**BASE, "system": 5}, "system: expected a string or an array, got an integer"),
    ({**BASE, "cache_control": {"type": "forever"}}, "cache_control.type: expected one of"),
])
def test_wrong_shapes_are_400s_naming_the_path(body: dict[str, Any], expected: str) -> None:
    assert expected in problem(body)


def test_count_tokens_ignores_max_tokens_and_stream() -> None:
    body = {"model": "m", "messages": BASE["messages"], "max_tokens": "x", "stream": 3}
    assert request_from_json(body, count_tokens=True).max_tokens is None


def test_problems_are_capped() -> None:
    body = with_blocks(*[{"type": "text", "text": i} for i in range(50)])
    assert problem(body).count("expected a string") == MAX_PROBLEMS


def nested(depth: int) -> dict[str, Any]:
    """A body ``depth`` levels deep (the body is level 1; a tool input starts at level 6)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 6):
        value = {"a": value}
    return with_blocks({"type": "tool_use", "id": "t", "name": "n", "input": value},
                       role="assistant")


@pytest.mark.parametrize("surrogate", [False, True])
def test_nesting_is_bounded(surrogate: bool) -> None:
    body = nested(MAX_DEPTH)
    if surrogate:  # orjson cannot write it: the Python walk decides
        body["model"] = "m\ud800"
    validate_request(body)
    message = problem(nested(MAX_DEPTH + 1))
    assert message.startswith("messages.0.content.0.input.a.a.a.…: nested too deeply")
    assert len(message) < 200


def test_deep_tool_schema_is_refused() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(1000):
        schema = {"type": "object", "properties": {"x": schema}}
    assert "tools.0.input_schema" in problem({**BASE, "tools": [{"name": "t",
                                                                 "input_schema": schema}]})


@pytest.mark.parametrize("raw", [
    b"[" * 1025 + b"]" * 1025,
    b'{"a":' * 100_000,
    b'{"model":"m","max_tokens":1' + b"0" * 5000 + b"}",
    b'{"model":"m","max_tokens":1,"temperature":NaN}',
    b'{"model":"m","max_tokens":1,"top_p":1e999}',
    b'{"model":"m\\ud800","max_tokens":1,"top_p":Infinity}',
])
def test_hostile_json_is_a_400_not_a_crash(raw: bytes) -> None:
    with pytest.raises(JSONDecodeError):
        loads(raw)
    with pytest.raises(RelayError) as info:
        parse_request(raw)
    assert info.value.status == 400 and "not valid JSON" in info.value.message


def test_dumps_fails_cleanly_on_what_it_cannot_write() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(JSONEncodeError, match="nested too deeply"):
        dumps(deep)
    with pytest.raises(JSONEncodeError, match="too many digits"):
        dumps(10**5000)
    written = dumps({"a": "\ud800", "n": 10**30})
    assert written == b'{"a":"\\ud800","n":1000000000000000000000000000000}'


def test_unknown_top_level_values_are_kept_whatever_they_are() -> None:
    raw = json.dumps({**BASE, "speed": {"x": [1, None, "y" * 100]}, "beta": 10**20}).encode()
    assert parse_request(raw).extra == {"speed": {"x": [1, None, "y" * 100]}, "beta": 1e20}
