"""Issue 8's reproducers, each through the real relay on both backends: a 400, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fuzz.conftest import Target

pytestmark = pytest.mark.integration

BASE: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}]}


def body(**fields: Any) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def deep_schema(levels: int) -> bytes:
    """A tool schema ``2 * levels`` deep, as text (too deep for :func:`json.dumps`)."""
    return (b'{"type":"object","properties":{"x":' * levels + b'{"type":"string"}'
            + b"}}" * levels)


CASES = {
    "nested 1,100 levels": body(metadata={"x": "PLACEHOLDER"}).replace(
        b'"PLACEHOLDER"', b"[" * 1100 + b"]" * 1100),
    "5,000-digit integer": body().replace(b'"max_tokens": 10', b'"max_tokens": 1' + b"0" * 5000),
    "lone surrogate and NaN": body(model="claude-\ud800").replace(b'"max_tokens": 10',
                                                                    b'"max_tokens": NaN'),
    "tool schema nested 1,000 levels": body(tools=[{"name": "t", "input_schema": "S"}]).replace(
        b'"S"', deep_schema(500)),
    "text of the wrong type": body(messages=[{"role": "user", "content": [
        {"type": "text", "text": {"a": 1}}]}]),
    "tool_result content of the wrong type": body(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": 7}]}]),
    "image source not an object": body(messages=[{"role": "user", "content": [
        {"type": "image", "source": "aGk="}]}]),
    "thinking.type an object": body(thinking={"type": {"type": "enabled"}}),
    "tool_choice.type an object": body(tools=[{"name": "t", "input_schema": {}}],
                                       tool_choice={"type": {"type": "any"}}),
    "temperature out of range": body(temperature=-7),
    "top_p infinite": body().replace(b'"max_tokens": 10', b'"max_tokens": 10, "top_p": 1e999'),
    "max_tokens -1": body(max_tokens=-1),
    "model name of 1 MB": body(model="m" * 1_000_000),
    "schema enum not a list": body(tools=[{"name": "t", "input_schema": {
        "type": "object", "properties": {"a": {"enum": 5}}, "required": ["a"]}}],
        tool_choice={"type": "any"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_issue_8_reproducers_are_400s(target: Target, name: str) -> None:
    raw = CASES[name]
    answer = target.post("/v1/messages", raw)
    target.check(answer, raw)
    if name != "schema enum not a list":  # valid: the schema is open-ended JSON
        assert answer.status == 400, answer.body[:300]
        error = json.loads(answer.body)["error"]
        assert error["type"] == "invalid_request_error"
        assert "{'" not in error["message"] and "Error" not in error["message"]
        assert len(error["message"]) < 1000
