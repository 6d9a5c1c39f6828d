"""
Hostile streamed upstream answers (issue 8, item 1, the stream half).

Recorded fixture chunks are mutated into every shape an upstream can send — wrong types at any
path, string or huge indexes, JSON nested 100,000 deep, 5,000-digit integers, non-UTF-8 bytes,
giant events — and the translator must either translate them or end with one clean
``api_error`` event naming the problem: ``feed()``/``finish()`` never raise, the event
grammar always holds, and every tool input the client assembles is a JSON object.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import StreamGrammar
from txrelay.protocol.openai import ChatStreamTranslator, OpenAIDialect

from .streams import FIXTURES, load

SENTINEL = "\x00hostile\x00"
DEEP = b"[" * 100_000 + b"]" * 100_000
RAW_VALUES = [
    b"1" + b"0" * 5000,  # a 5,001-digit integer
    b"-" + b"9" * 5000,
    DEEP,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'"\xff\xfe\xc3("',  # not UTF-8
    b'"\\ud800"',  # a lone surrogate
    b"1e999",
    b"123456789012345678901234567890",
    b'"' + b"x" * 200_000 + b'"',  # a big string
]
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    7,
    1.5,
    "",
    "0",
    "x",
    "</think>",
    [],
    [1, "a"],
    [{"index": 0}],
    {},
    {"a": 1},
    {"index": "0", "function": "f"},
    "[" * 100_000,  # as argument text: a JSON prefix nested 100,000 deep
    '{"a": ' + "[" * 3000 + "]" * 3000 + "}",
    '{"n": ' + "7" * 5000 + "}",
]
KEYS = [
    "choices",
    "delta",
    "index",
    "id",
    "content",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "finish_reason",
    "usage",
    "reasoning_content",
    "reasoning_details",
    "refusal",
    "error",
    "object",
]
NAMES = sorted(FIXTURES)
ERROR_TYPES = {
    "api_error",
    "overloaded_error",
    "invalid_request_error",
    "rate_limit_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "timeout_error",
    "billing_error",
}


def chunks_of(name: str) -> list[bytes]:
    """The fixture's events as raw ``data`` payloads (other lines kept verbatim)."""
    text = load(name).replace(b"\r\n", b"\n")
    return [part for part in text.split(b"\n\n") if part.strip()]


def nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += nodes(v, (*path, i))
    return out


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


@st.composite
def mutated_stream(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    events = chunks_of(name)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(events) - 1))
        event = events[i]
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            continue
        try:
            chunk = json.loads(event[6:])
        except (ValueError, RecursionError):  # already mutated into something hostile
            continue
        kind = draw(st.sampled_from(["replace", "add", "raw"]))
        if kind == "raw":
            events[i] = b"data: " + draw(st.sampled_from(RAW_VALUES))
            continue
        path = draw(st.sampled_from(nodes(chunk)))
        raw = draw(st.none() | st.sampled_from(RAW_VALUES))
        new: Any = SENTINEL if raw is not None else draw(st.sampled_from(VALUES))
        if kind == "add":
            target = chunk
            for step in path:
                target = target[step]
            if isinstance(target, dict):
                new = {**target, draw(st.sampled_from(KEYS)): new}
        data = json.dumps(replaced(chunk, path, new)).encode()
        if raw is not None:
            data = data.replace(json.dumps(SENTINEL).encode(), raw)
        events[i] = b"data: " + data
    return name, b"\n\n".join(events) + b"\n\n"


def check(events: list[dict[str, Any]]) -> None:
    grammar = StreamGrammar()
    for e in events:
        grammar.feed(e)
    grammar.close()
    last = events[-1]
    if last["type"] == "error":
        err = last["error"]
        assert err["type"] in ERROR_TYPES
        assert isinstance(err["message"], str)
        assert "Traceback" not in err["message"]
        assert not re.search(r"object at 0x|Error\(|<class ", err["message"])
        return
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    for block in acc.result()["content"]:
        if block["type"] == "tool_use":
            assert isinstance(block["input"], dict)


def translate(name: str, data: bytes, cuts: list[int], **dialect: Any) -> list[dict[str, Any]]:
    base = FIXTURES[name].dialect
    t = ChatStreamTranslator(
        model="m",
        input_tokens=1,
        dialect=base if not dialect else OpenAIDialect(**{**_fields(base), **dialect}),
    )
    out = t.start()
    points = sorted({c % (len(data) + 1) for c in cuts})
    for a, b in itertools.pairwise([0, *points, len(data)]):
        out += t.feed(data[a:b])
    out += t.finish()
    assert t.done
    return out


def _fields(d: OpenAIDialect) -> dict[str, Any]:
    import attrs

    return attrs.asdict(d, recurse=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=mutated_stream(),
    cuts=st.lists(st.integers(0, 10**6), max_size=4),
    mode=st.sampled_from(["live", "complete"]),
)
def test_mutated_recorded_streams_never_raise(
    stream: tuple[str, bytes], cuts: list[int], mode: str
) -> None:
    name, data = stream
    check(translate(name, data, cuts, tool_streaming=mode))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=mutated_stream(), cuts=st.lists(st.integers(0, 10**6), max_size=4))
def test_mutated_streams_with_a_small_event_limit(
    stream: tuple[str, bytes], cuts: list[int]
) -> None:
    name, data = stream
    check(translate(name, data, cuts, max_event_size=4096))


def content_chunk(**delta: Any) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"choices": 5}', "'choices' is not a list"),
        (b'{"choices": {"0": {}}}', "'choices' is not a list"),
        (b'{"choices": [7]}', "an entry of 'choices' is not an object"),
        (b'{"choices": [{"index": 0, "delta": "hi"}]}', "'delta' is not an object"),
        (b'{"choices": [{"index": 0, "delta": {"content": 12}}]}', "'content' is neither"),
        (b'{"choices": [{"index": 0, "delta": {"tool_calls": {"a": 1}}}]}', "not a list"),
        (b'{"choices": [{"index": 0, "delta": {"tool_calls": [3]}}]}', "'tool_calls' is not an"),
        (
            b'{"choices": [{"index": 0, "delta": {"tool_calls": [{"function": "f"}]}}]}',
            "'function' is not an object",
        ),
        (b'{"choices": [{"index": 0, "finish_reason": 1}]}', "'finish_reason' is not a string"),
        (DEEP, "nested too deeply"),
        (b'{"choices": [{"delta": {"content": ' + DEEP + b"}}]}", "nested too deeply"),
        (b'{"usage": ' + b"1" * 5000 + b"}", "invalid JSON"),
        (b'{"choices": "\xff\xfe"}', "invalid JSON"),
    ],
)
def test_named_problems(body: bytes, problem: str) -> None:
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())
    events = t.start() + t.feed(content_chunk(content="ok") + b"data: " + body + b"\n\n")
    events += t.finish()
    check(events)
    assert events[-1]["type"] == "error"
    assert problem in events[-1]["error"]["message"], events[-1]
    assert t.error is not None
    assert t.error.status == 502


def test_deeply_nested_tool_arguments_are_not_forwarded() -> None:
    call = {"index": 0, "id": "a", "function": {"name": "A", "arguments": '{"x": ' + "[" * 300}}
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())
    events = t.start() + t.feed(content_chunk(tool_calls=[call])) + t.finish()
    check(events)
    assert "nested more than 256 levels deep" in events[-1]["error"]["message"]
    assert not any(e["type"] == "content_block_delta" for e in events)


def test_string_and_huge_indexes_are_translated() -> None:
    calls = [
        {"index": "0", "id": "a", "function": {"name": "A", "arguments": '{"x": 1}'}},
        {"index": 10**30, "id": "b", "function": {"name": "B", "arguments": "{}"}},
    ]
    data = content_chunk(tool_calls=calls)
    data += b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}\n\n'
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())
    events = t.start() + t.feed(data + b"data: [DONE]\n\n") + t.finish()
    check(events)
    names = [e["content_block"]["name"] for e in events if e["type"] == "content_block_start"]
    assert names == ["A", "B"]


def test_huge_usage_numbers_are_not_believed() -> None:
    usage = b'{"choices": [], "usage": {"prompt_tokens": 1e300, "completion_tokens": ' + (
        b"9" * 40 + b"}}"
    )
    data = content_chunk(content="hi")
    data += b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
    data += b"data: " + usage + b"\n\ndata: [DONE]\n\n"
    t = ChatStreamTranslator(model="m", input_tokens=3, dialect=OpenAIDialect())
    events = t.start() + t.feed(data) + t.finish()
    check(events)
    final = events[-2]["usage"]
    assert final["input_tokens"] == 3
    assert final["output_tokens"] == 1  # estimated from the text, not 10**40


def test_a_bug_in_translation_ends_in_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect())

    def boom(*_: Any) -> None:
        raise TypeError("unexpected")

    monkeypatch.setattr(ChatStreamTranslator, "_delta", boom)  # (slots: not on the instance)
    events = t.start() + t.feed(content_chunk(content="hi"))
    check(events)
    assert events[-1]["error"]["message"] == (
        "upstream: upstream sent a stream the relay could not translate (an unexpected shape)"
    )
    assert t.finish() == []
