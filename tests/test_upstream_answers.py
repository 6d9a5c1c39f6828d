"""Hostile non-streaming upstream answers: translated, or a 502 naming the problem, no crash."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import JSONDecodeError, loads
from txrelay.protocol.openai import PRESETS, chat_response_events

GOOD = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}}


def fold(body: dict[str, Any]) -> dict[str, Any]:
    events = chat_response_events(body, model="m", input_tokens=1, dialect=PRESETS["generic"],
                                  upstream_name="up")
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    return acc.result()


def test_a_good_answer_translates() -> None:
    content = fold(GOOD)["content"]
    assert [(b["type"], b["text"]) for b in content] == [("text", "hi")]


def deep(n: int) -> Any:
    value: Any = "x"
    for _ in range(n):
        value = [value]
    return value


@pytest.mark.parametrize("body, fragment", [
    ({"choices": {"0": GOOD["choices"][0]}}, "choices: expected an array, got an object"),
    ({"choices": 5}, "choices: expected an array, got an integer"),
    ({"choices": ["x"]}, "choices.0: expected an object, got a string"),
    ({"choices": [{"message": "hi"}]}, "choices.0.message: expected an object, got a string"),
    ({"choices": [{"message": {"content": 5}}]},
     "choices.0.message.content: expected a string or an array, got an integer"),
    ({"choices": [{"message": {"reasoning_content": {"a": 1}}}]},
     "choices.0.message.reasoning_content: expected a string, got an object"),
    ({"choices": [{"message": {"tool_calls": {"a": 1}}}]},
     "choices.0.message.tool_calls: expected an array, got an object"),
    ({"choices": [{"message": {}, "finish_reason": 1}]},
     "choices.0.finish_reason: expected a string, got an integer"),
    ({**GOOD, "usage": [1]}, "usage: expected an object, got an array"),
    ({**GOOD, "x": deep(500)}, "nested more than 128 levels"),
])
def test_unexpected_shapes_are_502s_naming_the_problem(body: dict[str, Any], fragment: str
                                                       ) -> None:
    with pytest.raises(RelayError) as info:
        fold(body)
    assert info.value.status == 502 and info.value.type == "api_error"
    assert info.value.message.startswith("up: upstream sent an unexpected response: ")
    assert fragment in info.value.message


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000,
                                 b'{"n":1' + b"0" * 5000 + b"}"])
def test_unparsable_bodies_are_decode_errors(raw: bytes) -> None:
    # upstream/openai.py turns JSONDecodeError into a 502 "not JSON".
    with pytest.raises(JSONDecodeError):
        loads(raw)


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=6)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=10)
MESSAGE_KEYS = ["role", "content", "reasoning_content", "reasoning", "refusal", "tool_calls",
                "reasoning_details", "function_call"]
calls = st.lists(st.fixed_dictionaries({}, optional={
    "id": values, "type": values, "index": values,
    "function": st.fixed_dictionaries({}, optional={"name": values, "arguments": values
                                                    | st.just('{"a": 1}')}) | values}),
    max_size=3)
messages = st.fixed_dictionaries({}, optional={k: values for k in MESSAGE_KEYS}
                                 | {"tool_calls": calls | values})
choices = st.fixed_dictionaries({}, optional={"index": values, "message": messages | values,
                                              "finish_reason": st.sampled_from(
                                                  ["stop", "length", "tool_calls", None])
                                              | values})
bodies = st.fixed_dictionaries({}, optional={"choices": st.lists(choices, max_size=2) | values,
                                             "usage": values, "error": values,
                                             "object": values})


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_any_body_translates_or_is_a_relay_error(body: dict[str, Any]) -> None:
    try:
        fold(body)
    except RelayError as e:
        assert e.status >= 400 and "Traceback" not in e.message
