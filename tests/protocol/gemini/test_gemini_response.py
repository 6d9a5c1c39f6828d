"""Non-streaming ``generateContent`` → Anthropic message (mapping.md §6), and countTokens."""

from __future__ import annotations

from typing import Any

import pytest

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import StreamGrammar
from txrelay.protocol.gemini import (
    GeminiStreamTranslator,
    count_tokens_result,
    gemini_response_events,
    parse_gemini_response,
)
from txrelay.protocol.jsoncodec import loads

from .streams import FIXTURES, load, names


def message(body: Any) -> dict[str, Any]:
    events = gemini_response_events(body, model="claude-test", input_tokens=100,
                                    message_id="msg_x", tool_names=names(),
                                    upstream_model="gemini-2.5-flash")
    grammar = StreamGrammar()
    for e in events:
        grammar.feed(e)
    grammar.close()
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    return acc.result()


def test_whole_response() -> None:
    msg = message({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Hm.", "thought": True},
            {"text": "Let me check."},
            {"functionCall": {"name": "Read", "args": {"path": "x"}}, "thoughtSignature": "QQ=="},
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 40, "cachedContentTokenCount": 8,
                          "candidatesTokenCount": 5, "thoughtsTokenCount": 3},
        "responseId": "abc",
    })
    assert msg["id"] == "msg_x" and msg["model"] == "claude-test"
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "thinking", "tool_use"]
    assert msg["stop_reason"] == "tool_use"
    assert msg["usage"]["input_tokens"] == 32
    assert msg["usage"]["cache_read_input_tokens"] == 8
    assert msg["usage"]["output_tokens"] == 8


@pytest.mark.parametrize("name", sorted(n for n, e in FIXTURES.items() if e.error is None))
def test_stream_fixtures_as_one_array_give_the_same_message(name: str) -> None:
    """The array form of streamGenerateContent (no alt=sse) equals the streamed answer."""
    chunks = [loads(line[5:]) for line in load(name).replace(b"\r\n", b"\n").split(b"\n")
              if line.startswith(b"data:")]
    t = GeminiStreamTranslator(model="claude-test", input_tokens=100, message_id="msg_x",
                               tool_names=names(), upstream_model="gemini-2.5-flash")
    acc = MessageAccumulator()
    for e in t.start() + t.feed(load(name)) + t.finish():
        acc.feed(e)
    streamed = acc.result()
    whole = message(chunks)
    strip = [{k: v for k, v in b.items() if k != "signature" or not v.startswith(
        "txr1.gem.none.")} for b in whole["content"]]
    assert strip == [{k: v for k, v in b.items() if k != "signature" or not v.startswith(
        "txr1.gem.none.")} for b in streamed["content"]]
    assert whole["stop_reason"] == streamed["stop_reason"]
    assert whole["usage"] == streamed["usage"]


def test_prompt_blocked_is_a_refusal() -> None:
    msg = message({"promptFeedback": {"blockReason": "SAFETY"},
                   "usageMetadata": {"promptTokenCount": 7}})
    assert msg["stop_reason"] == "refusal"
    assert "SAFETY" in msg["content"][0]["text"]


def test_candidate_without_content() -> None:
    msg = message({"candidates": [{"finishReason": "MAX_TOKENS"}]})
    assert msg["content"] == [] and msg["stop_reason"] == "max_tokens"


def test_error_in_a_200_body_raises_from_the_accumulator() -> None:
    events = gemini_response_events(
        {"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}},
        model="m", input_tokens=1)
    assert events[-1]["type"] == "error"
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    with pytest.raises(RelayError) as info:
        acc.result()
    assert info.value.type == "overloaded_error"


def test_parse_gemini_response() -> None:
    assert parse_gemini_response(b' {"candidates": []} ') == {"candidates": []}
    with pytest.raises(RelayError) as info:
        parse_gemini_response(b"<html>oops</html>")
    assert info.value.type == "api_error"


@pytest.mark.parametrize(("body", "expected"), [
    ({"totalTokens": 1234, "promptTokensDetails": []}, 1234),
    (b'{"totalTokens": "99"}', 99),
    ({}, 0),
])
def test_count_tokens_result(body: Any, expected: int) -> None:
    assert count_tokens_result(body) == expected


@pytest.mark.parametrize("body", [{"totalTokens": -1}, {"totalTokens": "x"}, b"nope", [],
                                  {"error": {"code": 500}}])
def test_count_tokens_result_rejects_nonsense(body: Any) -> None:
    with pytest.raises(RelayError) as info:
        count_tokens_result(body)
    assert info.value.type == "api_error"
