"""
Issue 7.9: the SSE parser and the message accumulator do linear work, and an event has a size
limit.

The sizes below prove linearity without a timing threshold: on the quadratic implementations
(the parser re-joining and re-splitting its whole pending tail per read, the accumulator
growing strings by concatenation) these inputs cost minutes of copying; linear code handles
them in well under a second.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import StreamGrammar
from txrelay.protocol.openai import ChatStreamTranslator, OpenAIDialect
from txrelay.protocol.sse import DEFAULT_MAX_EVENT_SIZE, SSEEvent, SSEEventTooLarge, SSEParser


def feed_all(parser: SSEParser, data: bytes, cuts: list[int]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    last = 0
    for cut in sorted(set(cuts)):
        out += parser.feed(data[last:cut])
        last = cut
    out += parser.feed(data[last:])
    return out + parser.finish()


def test_one_15_mib_event_in_512_byte_reads() -> None:
    payload = b"x" * (15 << 20)
    data = b"data: " + payload + b"\n\n"
    parser = SSEParser()
    out: list[SSEEvent] = []
    for i in range(0, len(data), 512):
        out += parser.feed(data[i : i + 512])
    assert out == [SSEEvent(None, payload)]
    assert parser.finish() == []


def test_many_line_event_in_small_reads() -> None:
    lines = [b"data: %d" % i for i in range(200_000)]
    data = b"\n".join(lines) + b"\n\n"
    parser = SSEParser()
    out: list[SSEEvent] = []
    for i in range(0, len(data), 100):
        out += parser.feed(data[i : i + 100])
    assert out == [SSEEvent(None, b"\n".join(line[6:] for line in lines))]


def test_default_limit_is_generous() -> None:
    assert DEFAULT_MAX_EVENT_SIZE == 16 * 1024 * 1024
    assert SSEParser().max_event_size == DEFAULT_MAX_EVENT_SIZE


def test_incomplete_event_over_the_limit_raises_with_the_events_before() -> None:
    parser = SSEParser(max_event_size=1000)
    assert parser.feed(b"data: a\n\ndata: ") == [SSEEvent(None, b"a")]
    with pytest.raises(SSEEventTooLarge) as info:
        for _ in range(20):
            parser.feed(b"y" * 100)
    assert info.value.limit == 1000
    assert "1000-byte limit" in str(info.value)
    with pytest.raises(SSEEventTooLarge):  # the parser stays failed
        parser.feed(b"\n\ndata: b\n\n")
    assert parser.finish() == []


def test_complete_event_over_the_limit_in_one_read() -> None:
    parser = SSEParser(max_event_size=100)
    with pytest.raises(SSEEventTooLarge) as info:
        parser.feed(b"data: 1\n\ndata: " + b"z" * 200 + b"\n\ndata: 3\n\n")
    assert info.value.events == [SSEEvent(None, b"1")]


def test_many_small_lines_add_up_to_the_limit() -> None:
    parser = SSEParser(max_event_size=100)
    with pytest.raises(SSEEventTooLarge):
        parser.feed(b"data: 0123456789\n" * 20)


STREAM = (
    b"data: one\n\n: keep-alive\n\nevent: x\ndata: two\n\ndata: " + b"q" * 300 + b"\n\ndata: 4\n\n"
)


@given(st.lists(st.integers(0, len(STREAM)), max_size=15))
def test_limit_is_split_invariant(cuts: list[int]) -> None:
    parser = SSEParser(max_event_size=200)
    seen: list[SSEEvent] = []
    last = 0
    with pytest.raises(SSEEventTooLarge):
        for cut in [*sorted(set(cuts)), len(STREAM)]:
            try:
                seen += parser.feed(STREAM[last:cut])
            except SSEEventTooLarge as e:
                seen += e.events
                raise
            last = cut
    assert seen == [SSEEvent(None, b"one"), SSEEvent("x", b"two")]


@given(st.lists(st.integers(0, len(STREAM)), max_size=15))
def test_within_the_limit_nothing_changes(cuts: list[int]) -> None:
    events = feed_all(SSEParser(max_event_size=312), STREAM, cuts)
    assert [e.data[:3] for e in events] == [b"one", b"two", b"qqq", b"4"]


# --- the translator turns the limit into an error event -----------------------------------


def chunk(text: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@given(st.lists(st.integers(0, 2000), max_size=8))
def test_translator_reports_an_oversized_event(cuts: list[int]) -> None:
    data = chunk("Hello") + chunk("x" * 1500) + chunk("never") + b"data: [DONE]\n\n"
    t = ChatStreamTranslator(model="m", input_tokens=1, dialect=OpenAIDialect(max_event_size=1024))
    events = t.start()
    events += feed_all_translator(t, data, cuts)
    grammar = StreamGrammar()
    for e in events:
        grammar.feed(e)
    grammar.close()
    texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert texts == ["Hello"]
    assert events[-1]["type"] == "error"
    message = events[-1]["error"]["message"]
    assert events[-1]["error"]["type"] == "api_error"
    assert "1024 bytes" in message
    assert "max_event_size" in message
    assert t.error is not None
    assert t.error.status == 502


def feed_all_translator(t: ChatStreamTranslator, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += t.feed(data[last:cut])
        last = cut
    return out + t.finish()


# --- the accumulator -------------------------------------------------------------------------


def test_accumulator_folds_a_million_one_character_deltas() -> None:
    acc = MessageAccumulator()
    acc.feed({"type": "message_start", "message": {"content": [], "usage": {}}})
    acc.feed(
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        }
    )
    for c in itertools.islice(itertools.cycle("ab"), 1_000_000):
        acc.feed(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": c},
            }
        )
    acc.feed(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "s"},
        }
    )
    acc.feed({"type": "content_block_stop", "index": 0})
    acc.feed(
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "text", "text": "pre:"},
        }
    )
    for _ in range(1_000_000):
        acc.feed(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "z"},
            }
        )
    # No content_block_stop for the text block: result() still joins it.
    msg = acc.result()
    assert msg["content"][0]["thinking"] == "ab" * 500_000
    assert msg["content"][0]["signature"] == "s"
    assert msg["content"][1]["text"] == "pre:" + "z" * 1_000_000
