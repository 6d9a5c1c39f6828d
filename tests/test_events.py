"""The stream grammar checker and the accumulator every non-streaming reply is built with."""

from __future__ import annotations

import pytest

from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import GrammarError, StreamGrammar
from txrelay.testing import text_events


def full_stream() -> list[ev.Event]:
    return [
        ev.message_start("msg_1", "m", ev.empty_usage(12)),
        ev.ping(),
        ev.thinking_block_start(0),
        ev.thinking_delta(0, "hmm"),
        ev.signature_delta(0, "sig"),
        ev.block_stop(0),
        ev.text_block_start(1),
        ev.text_delta(1, "Hi "),
        ev.ping(),
        ev.text_delta(1, "there"),
        ev.block_stop(1),
        ev.tool_use_block_start(2, "toolu_1", "Read"),
        ev.input_json_delta(2, ""),
        ev.input_json_delta(2, '{"path": "a'),
        ev.input_json_delta(2, '.py"}'),
        ev.block_stop(2),
        ev.message_delta("tool_use", None, {"output_tokens": 9, "cache_read_input_tokens": 4}),
        ev.message_stop(),
    ]


def test_grammar_accepts_a_full_stream() -> None:
    g = StreamGrammar()
    for e in full_stream():
        g.feed(e)
    g.close()


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s[2:], "first event is content_block_start"),
    (lambda s: s[1:], "ping before message_start"),
    (lambda s: [*s[:6], ev.text_block_start(2), *s[7:]], "block index 2, expected 1"),
    (lambda s: s[:5] + s[6:], "while another block is open"),
    (lambda s: [*s[:7], ev.thinking_delta(1, "x"), *s[8:]], "thinking_delta delta in a text"),
    (lambda s: [*s[:-2], {"type": "message_delta", "delta": {}, "usage": {}}, *s[-1:]],
     "usage.output_tokens"),
    (lambda s: s[:-1], "without message_stop"),
    (lambda s: s[:-2] + s[-1:], "message_stop without message_delta"),
    (lambda s: [*s, ev.ping()], "after the stream ended"),
])
def test_grammar_rejects(mutate, message) -> None:  # type: ignore[no-untyped-def]
    g = StreamGrammar()
    with pytest.raises(GrammarError, match=message):
        for e in mutate(full_stream()):
            g.feed(e)
        g.close()


def test_error_event_ends_a_stream() -> None:
    g = StreamGrammar()
    g.feed(ev.message_start("m", "m", ev.empty_usage()))
    g.feed(ev.text_block_start(0))
    g.feed(RelayError("overloaded_error", "busy").event())
    g.close()


def test_accumulator_builds_the_message() -> None:
    acc = MessageAccumulator()
    for e in full_stream():
        acc.feed(e)
    msg = acc.result()
    assert msg["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Hi there"},
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
    ]
    assert msg["stop_reason"] == "tool_use"
    assert msg["usage"] == {"input_tokens": 12, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 4, "output_tokens": 9}


def test_accumulator_tool_without_deltas_keeps_empty_input() -> None:
    acc = MessageAccumulator()
    for e in [ev.message_start("m", "m", ev.empty_usage()), ev.tool_use_block_start(0, "t", "x"),
              ev.block_stop(0), ev.message_delta("tool_use", None, {"output_tokens": 1}),
              ev.message_stop()]:
        acc.feed(e)
    assert acc.result()["content"][0]["input"] == {}


def test_accumulator_raises_the_stream_error() -> None:
    acc = MessageAccumulator()
    for e in [*text_events("abc")[:3], RelayError("overloaded_error", "busy").event()]:
        acc.feed(e)
    with pytest.raises(RelayError) as info:
        acc.result()
    assert info.value.status == 529
