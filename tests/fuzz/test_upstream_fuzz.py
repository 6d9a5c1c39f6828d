"""
Hostile upstream answers through the real relay (openai-chat in front of the fake upstream):
any body a server can send is translated or a 502 ``api_error`` naming the problem; never a
500 of our own, never a traceback.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fakeupstream import json_response, sse
from tests.fuzz.conftest import Target, examples
from tests.fuzz.strategies import RawNumber, encode, json_value, texts

pytestmark = pytest.mark.integration

REQUEST = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [
    {"role": "user", "content": "hi"}], "tools": [{"name": "Read", "input_schema": {
        "type": "object", "properties": {"path": {"type": "string"}}}}]}).encode()

anything = json_value | texts | st.just(RawNumber("1" + "0" * 5000)) | st.just(
    RawNumber("[" * 100_000 + "]" * 100_000))
calls = st.lists(st.fixed_dictionaries({}, optional={
    "id": anything, "type": st.just("function") | anything, "index": st.integers(0, 2) | anything,
    "function": st.fixed_dictionaries({}, optional={
        "name": st.just("Read") | anything,
        "arguments": st.just('{"path": "/a"}') | st.just('{"path": ') | anything}) | anything,
}), max_size=2)
messages = st.fixed_dictionaries({}, optional={
    "role": st.just("assistant") | anything, "content": texts | anything,
    "reasoning_content": texts | anything, "refusal": anything,
    "tool_calls": calls | anything, "function_call": anything,
})
choices = st.fixed_dictionaries({}, optional={
    "index": st.just(0) | anything, "message": messages | anything,
    "finish_reason": st.sampled_from(["stop", "length", "tool_calls", "error"]) | anything,
})
bodies = st.fixed_dictionaries({}, optional={
    "id": anything, "object": st.just("chat.completion") | anything,
    "choices": st.lists(choices, max_size=2) | anything,
    "usage": st.fixed_dictionaries({}, optional={"prompt_tokens": anything,
                                                 "completion_tokens": anything}) | anything,
    "error": anything,
})
raw_bodies = st.sampled_from([
    b"[" * 100_000 + b"]" * 100_000, b'{"choices":' * 100_000,
    b'{"choices":[],"usage":{"prompt_tokens":1' + b"0" * 5000 + b"}}",
    b'{"choices": "none"}', b'{"choices": [{"message": "hi"}]}', b"null", b"[]", b"",
    b'{"choices":[{"message":{"content":NaN}}]}', b"\xff\xfe", b"  \n{\"choices\": []}",
])


@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@example(body=b'{"error": {"message": "boom"}}', status=200)
@example(body=b'{"choices": [{"message": {"content": "x"}, "finish_reason": "error"}]}',
         status=200)
@given(body=bodies.map(encode) | raw_bodies, status=st.sampled_from([200, 200, 200, 400, 500]))
def test_hostile_non_streaming_answers(openai: Target, body: bytes, status: int) -> None:
    assert openai.fake is not None
    openai.fake.push(json_response(None, status=status, raw=body))
    answer = openai.post("/v1/messages", REQUEST)
    openai.fake.script.clear()
    log = openai.new_log()
    assert "Traceback" not in log and "Unhandled" not in log, f"{body[:300]!r}\n{log[-3000:]}"
    if answer.status >= 500:
        error = json.loads(answer.body)["error"]
        # The upstream's fault, said so: a 502 (or the upstream's own 5xx mapped through).
        assert "internal relay error" not in error["message"], (body[:300], error)
        assert answer.status != 500 or status == 500, (answer.status, error, body[:300])


chunk_bodies = st.fixed_dictionaries({}, optional={
    "choices": st.lists(st.fixed_dictionaries({}, optional={
        "index": st.just(0) | anything, "delta": messages | anything,
        "finish_reason": st.sampled_from(["stop", "length", "tool_calls"]) | anything,
    }), max_size=2) | anything,
    "usage": anything, "error": anything,
})
frames = st.lists(chunk_bodies.map(lambda c: "data: " + encode(c).decode("ascii"))
                  | st.sampled_from(["data: [DONE]", ": keep-alive", "data: {", "event: x",
                                     "data: " + "[" * 5000, "retry: 5"]), max_size=6)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=frames, done=st.booleans())
def test_hostile_streamed_answers(openai: Target, lines: list[str], done: bool) -> None:
    assert openai.fake is not None
    openai.fake.push(sse(lines, done=done))
    streaming = REQUEST.replace(b'"max_tokens": 50', b'"max_tokens": 50, "stream": true')
    answer = openai.post("/v1/messages", streaming)
    openai.fake.script.clear()
    log = openai.new_log()
    assert "Traceback" not in log and "Unhandled" not in log, f"{lines!r}\n{log[-3000:]}"
    assert answer.status < 500 or b"internal relay error" not in answer.body, lines
    for event in answer.error_events():
        assert "internal relay error" not in event["error"]["message"], (lines, event)
