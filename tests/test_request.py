"""Parsing the client's request: exact types, clear messages, lenient about new fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from txrelay.protocol.anthropic import parse_request
from txrelay.protocol.errors import RelayError

BASE: dict[str, Any] = {"model": "m", "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}]}


def bad(body: Any, *, count: bool = False) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RelayError) as info:
        parse_request(raw, count_tokens=count)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value.message


def test_minimal_request() -> None:
    req = parse_request(json.dumps(BASE).encode())
    assert req.model == "m" and req.max_tokens == 10 and not req.stream
    assert req.messages[0].blocks() == [{"type": "text", "text": "hi"}]


def test_unknown_fields_are_kept_aside() -> None:
    req = parse_request(json.dumps({**BASE, "context_management": {}, "speed": "fast"}).encode())
    assert req.extra == {"context_management": {}, "speed": "fast"}


def test_old_sampling_fields_are_accepted() -> None:  # R-X4
    req = parse_request(json.dumps({**BASE, "temperature": 1, "top_p": 0.9, "top_k": 5}).encode())
    assert (req.temperature, req.top_p, req.top_k) == (1.0, 0.9, 5)


def test_count_tokens_needs_no_max_tokens() -> None:
    body = {k: v for k, v in BASE.items() if k != "max_tokens"}
    assert parse_request(json.dumps(body).encode(), count_tokens=True).max_tokens is None


@pytest.mark.parametrize("body, fragment", [
    (b"", "empty"),
    (b"{", "not valid JSON"),
    (b"[1]", "must be a JSON object, got an array"),
    ({"model": "m", "messages": []}, "max_tokens: field required"),
    ({**BASE, "max_tokens": 1.5}, "max_tokens: expected an integer, got a number"),
    ({**BASE, "max_tokens": True}, "max_tokens: expected an integer, got a boolean"),
    ({**BASE, "max_tokens": -1}, "max_tokens: must be greater than or equal to 0, got -1"),
    ({**BASE, "model": None}, "model: expected a string, got null"),
    ({**BASE, "messages": "hi"}, "messages: expected an array, got a string"),
    ({**BASE, "messages": []}, "at least one message"),
    ({**BASE, "messages": [{"role": "bot", "content": "x"}]}, "messages.0.role: expected one of"),
    ({**BASE, "messages": [{"role": "user"}]}, "messages.0.content: field required"),
    ({**BASE, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages.0.content.0.type: field required"),
    ({**BASE, "stream": "yes"}, "stream: expected a boolean"),
    ({**BASE, "system": [{"type": "image"}]},
     "system.0.type: unknown content block type \"image\""),
    ({**BASE, "tools": [{"name": "x"}]}, "tools.0.input_schema: field required"),
    ({**BASE, "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({**BASE, "thinking": {"type": "enabled"}}, "thinking.budget_tokens: field required"),
    ({**BASE, "stop_sequences": "STOP"}, "stop_sequences: expected an array"),
])
def test_bad_requests_name_the_field(body: Any, fragment: str) -> None:
    assert fragment in bad(body)


def test_several_problems_are_reported_together() -> None:
    message = bad({"model": 1, "max_tokens": "1", "messages": [{"role": "user", "content": 2}]})
    assert "model" in message and "max_tokens" in message and "messages.0.content" in message


def test_lone_surrogates_are_accepted() -> None:
    raw = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a\\ud83d"}]}'
    assert parse_request(raw).messages[0].content == "a\ud83d"
