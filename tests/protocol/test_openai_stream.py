"""O→A stream translation (mapping.md §4) on fixture streams, unit cases and generated streams."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from typing import Any

import anthropic
import attrs
import httpx2
import jiter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import json_objects
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.openai import PRESETS, ChatStreamTranslator, OpenAIDialect, ToolNameMap
from txrelay.protocol.openai.request import decode_orx
from txrelay.protocol.sse import encode_events

from .streams import FIXTURES, Expect, load

GENERIC = PRESETS["generic"]


def make(
    expect: Expect | None = None, *, dialect: OpenAIDialect | None = None, **kw: Any
) -> ChatStreamTranslator:
    """A translator with deterministic ids and signatures."""
    expect = expect or Expect()
    ids = itertools.count(1)
    sigs = itertools.count(1)
    return ChatStreamTranslator(
        model="claude-test",
        input_tokens=100,
        dialect=dialect or expect.dialect,
        stop_sequences=expect.stop_sequences,
        message_id="msg_test",
        id_factory=lambda: f"toolu_{next(ids):04d}",
        signature_factory=lambda: f"txr1.oai.sig{next(sigs)}",
        **kw,
    )


def run(
    data: bytes,
    expect: Expect | None = None,
    pieces: list[bytes] | None = None,
    **kw: Any,
) -> list[Event]:
    t = make(expect, **kw)
    out = t.start()
    for piece in pieces if pieces is not None else [data]:
        out += t.feed(piece)
    out += t.finish()
    assert t.done
    return out


def sse(*chunks: Any, done: bool = True) -> bytes:
    body = b"".join(
        b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n"
        for c in chunks
    )
    return body + (b"data: [DONE]\n\n" if done else b"")


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d}]}


def finish(reason: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason, **extra}]}


def check_stream(events: list[Event]) -> dict[str, Any] | None:
    """Grammar, SDK-style partial JSON, accumulation; the message (None if it errored)."""
    grammar = StreamGrammar()
    for e in events:
        grammar.feed(e)
    grammar.close()
    partials: dict[int, list[str]] = defaultdict(list)
    for e in events:
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            partials[e["index"]].append(e["delta"]["partial_json"])
            buf = "".join(partials[e["index"]]).encode()
            if buf:  # exactly what the Python SDK does after every delta
                jiter.from_json(buf, partial_mode=True)
    if events[-1]["type"] == "error":
        assert not any(e["type"] in ("message_delta", "message_stop") for e in events)
        return None
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    msg = acc.result()
    for i, block in enumerate(msg["content"]):
        if block["type"] == "tool_use":
            assert isinstance(block["input"], dict)
            text = "".join(partials[i])
            assert (json.loads(text) if text else {}) == block["input"]
        if block["type"] == "thinking":
            assert block["signature"].startswith("txr1.")
    return msg


def summary(msg: dict[str, Any]) -> tuple[tuple[Any, ...], ...]:
    out: list[tuple[Any, ...]] = []
    for b in msg["content"]:
        if b["type"] == "text":
            out.append(("text", b["text"]))
        elif b["type"] == "thinking":
            out.append(("thinking", b["thinking"]))
        elif b["type"] == "tool_use":
            out.append(("tool_use", b["name"], b["input"]))
        else:
            out.append((b["type"],))
    return tuple(out)


def check_expect(events: list[Event], expect: Expect) -> dict[str, Any] | None:
    msg = check_stream(events)
    if expect.error is not None:
        assert msg is None, "expected an error event"
        err = events[-1]["error"]
        assert err["type"] == expect.error
        if expect.error_message:
            assert expect.error_message in err["message"]
        return None
    assert msg is not None, events[-1]
    assert summary(msg) == expect.blocks
    assert msg["stop_reason"] == expect.stop_reason
    assert msg["stop_sequence"] == expect.stop_sequence
    for key, value in expect.usage.items():
        assert msg["usage"][key] == value, key
    return msg


NAMES = sorted(FIXTURES)


# --- fixture streams ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fixture_expected(name: str) -> None:
    expect = FIXTURES[name]
    events = run(load(name), expect)
    check_expect(events, expect)
    assert events[0]["type"] == "message_start"
    assert events[1] == {"type": "ping"}  # R-S2


@pytest.mark.parametrize("name", NAMES)
def test_fixture_single_bytes(name: str) -> None:
    data = load(name)
    expect = FIXTURES[name]
    whole = run(data, expect)
    assert run(data, expect, [data[i : i + 1] for i in range(len(data))]) == whole


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_fixture_line_endings(name: str, eol: bytes) -> None:
    data = load(name)
    expect = FIXTURES[name]
    assert run(data.replace(b"\n", eol), expect) == run(data, expect)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_fixture_split_invariance(name: str, points: list[int]) -> None:
    data = load(name)
    expect = FIXTURES[name]
    cuts = sorted({p % (len(data) + 1) for p in points})
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
    assert run(data, expect, pieces) == run(data, expect)


@pytest.mark.parametrize("name", [n for n in NAMES if not FIXTURES[n].mode_sensitive])
def test_fixture_complete_mode_same_message(name: str) -> None:
    """R-S11 complete-then-emit gives the same message as live streaming (R-S10)."""
    expect = FIXTURES[name]
    dialect = attrs.evolve(expect.dialect, tool_streaming="complete")
    check_expect(run(load(name), expect, dialect=dialect), expect)


def _sdk_final_message(body: bytes) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = anthropic.Anthropic(
        api_key="test",
        base_url="http://relay.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    with client.messages.stream(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        return stream.get_final_message()


@pytest.mark.parametrize("name", NAMES)
def test_fixture_anthropic_sdk_round_trip(name: str) -> None:
    """The official SDK parses our SSE encoding into the same message (§14 item 14)."""
    expect = FIXTURES[name]
    events = run(load(name), expect)
    body = encode_events(events)
    if expect.error is not None:
        with pytest.raises(anthropic.APIStatusError) as info:
            _sdk_final_message(body)
        assert expect.error in str(info.value.body)
        return
    ours = check_stream(events)
    assert ours is not None
    theirs = _sdk_final_message(body).to_dict()
    assert theirs["content"] == ours["content"]
    assert theirs["stop_reason"] == ours["stop_reason"]
    assert theirs["usage"]["output_tokens"] == ours["usage"]["output_tokens"]
    assert theirs["usage"]["input_tokens"] == ours["usage"]["input_tokens"]


# --- unit cases by rule -------------------------------------------------------------------


def test_r_s1_message_start_echoes_model_and_estimate() -> None:
    t = make()
    start = t.start()
    msg = start[0]["message"]
    assert msg["model"] == "claude-test"
    assert msg["id"] == "msg_test"
    assert msg["usage"] == {
        "input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    assert t.start() == []


def test_r_s7_no_block_for_null_or_empty_content() -> None:
    events = run(sse(delta(role="assistant", content=None), delta(content=""), finish()))
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "message_delta",
        "message_stop",
    ]
    assert events[2]["usage"]["output_tokens"] == 0


def test_r_s6_whitespace_only_text_is_dropped_at_end() -> None:
    events = run(sse(delta(content="\n"), delta(content="  "), finish()))
    assert not any(e["type"] == "content_block_start" for e in events)


def test_r_s5_signature_delta_right_before_stop() -> None:
    events = run(sse(delta(reasoning_content="hmm"), delta(content="ok"), finish()))
    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in events]
    i = kinds.index(("content_block_delta", "signature_delta"))
    assert kinds[i + 1] == ("content_block_stop", None)
    assert events[i]["delta"]["signature"] == "txr1.oai.sig1"


def test_r_s8_thinking_after_text_starts_a_new_block() -> None:
    msg = check_stream(
        run(
            sse(
                delta(reasoning_content="a"),
                delta(content="b"),
                delta(reasoning_content="c"),
                finish(),
            )
        )
    )
    assert msg is not None
    assert summary(msg) == (("thinking", "a"), ("text", "b"), ("thinking", "c"))


def test_r_s12_first_reasoning_source_wins() -> None:
    """A server sending both fields with the same text must not duplicate it (Q18)."""
    msg = check_stream(
        run(
            sse(
                delta(reasoning_content="x", reasoning="x"),
                delta(reasoning_content="y", reasoning="y"),
                delta(content="done"),
                finish(),
            )
        )
    )
    assert msg is not None
    assert summary(msg)[0] == ("thinking", "xy")


def test_r_s12_openrouter_signature_round_trips_reasoning_item() -> None:
    events = run(load("openrouter_reasoning"), FIXTURES["openrouter_reasoning"])
    msg = check_stream(events)
    assert msg is not None
    item = decode_orx(msg["content"][0]["signature"])
    assert item is not None
    assert item["signature"] == "EqMBCkYIBxgCKkBsigsig=="
    assert item["type"] == "reasoning.text"
    assert "text" not in item
    redacted = decode_orx(msg["content"][1]["data"])
    assert redacted == {
        "type": "reasoning.encrypted",
        "data": "ZW5jcnlwdGVkLWJsb2I=",
        "format": "anthropic-claude-v1",
        "index": 1,
    }


def test_r_s13_empty_body_is_an_error() -> None:
    events = run(b"")
    assert events[-1]["type"] == "error"
    assert "empty stream" in events[-1]["error"]["message"]


def test_7_11_done_without_anything_is_an_error_not_an_empty_message() -> None:
    """Q9 used to make this an empty end_turn; issue 7.11 makes it a cut stream."""
    t = make()
    events = run(b"data: [DONE]\n\n")
    assert check_stream(events) is None
    assert events[-1]["error"]["message"] == (
        "upstream: the upstream ended the stream without a finish reason; "
        "the answer may be incomplete"
    )
    t.feed(b"data: [DONE]\n\n")
    assert t.error is not None
    assert t.error.status == 502  # what a client sees when the stream was not committed yet


def test_7_11_finish_reason_optional_needs_the_usage_chunk() -> None:
    dialect = OpenAIDialect(finish_reason_optional=True)
    cut = run(sse(delta(content="hi")), dialect=dialect)
    assert "without a finish reason" in cut[-1]["error"]["message"]
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    for done in (True, False):  # [DONE] or EOF after the usage chunk
        msg = check_stream(run(sse(delta(content="hi"), usage, done=done), dialect=dialect))
        assert msg is not None
        assert msg["stop_reason"] == "end_turn"
        assert msg["usage"]["output_tokens"] == 1


@pytest.mark.parametrize("mode", ["live", "complete"])
@pytest.mark.parametrize("optional", [False, True])
def test_7_11_open_tool_arguments_at_the_end_are_always_an_error(mode: str, optional: bool) -> None:
    dialect = OpenAIDialect(finish_reason_optional=optional, tool_streaming=mode)  # type: ignore[arg-type]
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    call = {"index": 0, "id": "c", "function": {"name": "Write", "arguments": '{"path": "/tm'}}
    events = run(sse(delta(tool_calls=[call]), usage), dialect=dialect)
    assert check_stream(events) is None
    assert "in the middle of a tool call's arguments" in events[-1]["error"]["message"]
    assert not any(e["type"] == "message_delta" for e in events)


def test_7_11_complete_tool_arguments_without_finish_reason() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    call = {"index": 0, "id": "c", "function": {"name": "Read", "arguments": '{"path": "a"}'}}
    data = sse(delta(tool_calls=[call]), usage)
    assert "without a finish reason" in run(data)[-1]["error"]["message"]
    msg = check_stream(run(data, dialect=OpenAIDialect(finish_reason_optional=True)))
    assert msg is not None
    assert summary(msg) == (("tool_use", "Read", {"path": "a"}),)
    assert msg["stop_reason"] == "tool_use"


def test_q15_eof_after_finish_reason_is_a_normal_end() -> None:
    msg = check_stream(run(sse(delta(content="hi"), finish(), done=False)))
    assert msg is not None
    assert summary(msg) == (("text", "hi"),)


def test_r_s16_finish_seen_and_grace_period_finish() -> None:
    t = make()
    t.start()
    t.feed(sse(delta(content="hi"), done=False))
    assert not t.finish_seen
    t.feed(sse(finish(), done=False))
    assert t.finish_seen
    assert not t.done  # the usage chunk may still come
    out = t.feed(sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}))
    assert t.done
    assert out[-2]["usage"]["output_tokens"] == 2


def test_r_e4_error_after_open_block_emits_only_error() -> None:
    events = run(sse(delta(content="partial"), {"error": {"message": "boom"}}, done=False))
    assert [e["type"] for e in events][-3:] == [
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1]["error"]["type"] == "api_error"


def test_r_e4_nothing_after_error() -> None:
    t = make()
    t.start()
    out = t.feed(sse({"error": {"message": "boom", "code": 429}}, delta(content="late")))
    assert out[-1]["error"]["type"] == "rate_limit_error"
    assert t.done
    assert t.feed(sse(delta(content="more"))) == []
    assert t.finish() == []


def test_sse_event_named_error() -> None:
    events = run(b'event: error\ndata: {"error":{"message":"overloaded","code":529}}\n\n')
    assert events[-1]["error"]["type"] == "overloaded_error"


def test_r_x9_feeding_before_start_holds_events() -> None:
    t = make()
    assert t.feed(sse(delta(content="hello"), done=False)) == []
    assert t.received_event
    out = t.start()
    assert [e["type"] for e in out] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
    ]


def test_r_x9_error_before_start_is_visible() -> None:
    t = make()
    assert t.feed(sse({"error": {"message": "no provider available", "code": 503}})) == []
    assert t.done
    assert t.error is not None
    assert t.error.type == "overloaded_error"


def test_other_choices_are_ignored() -> None:
    msg = check_stream(
        run(
            sse(
                {
                    "choices": [
                        {"index": 1, "delta": {"content": "other"}},
                        {"index": 0, "delta": {"content": "mine"}},
                    ]
                },
                finish(),
            )
        )
    )
    assert msg is not None
    assert summary(msg) == (("text", "mine"),)


def test_r_u1_usage_overwritten_not_summed() -> None:
    events = run(
        sse(
            {**delta(content="a"), "usage": {"prompt_tokens": 10, "completion_tokens": 1}},
            {**delta(content="b"), "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
            {**finish(), "usage": {"prompt_tokens": 10, "completion_tokens": 3}},
        )
    )
    assert events[-2]["usage"]["output_tokens"] == 3
    assert events[-2]["usage"]["input_tokens"] == 10


def test_r_s14_output_estimated_without_usage() -> None:
    events = run(sse(delta(content="x" * 41), finish()))
    assert events[-2]["usage"]["output_tokens"] == 11
    assert events[-2]["usage"]["input_tokens"] == 100


def test_r_x11_minted_ids_by_default() -> None:
    msg = check_stream(run(load("openai_parallel_tools")))
    assert msg is not None
    assert [b["id"] for b in msg["content"]] == ["toolu_0001", "toolu_0002"]


def test_r_x11_preserve_tool_ids_keeps_safe_unique_ids() -> None:
    dialect = OpenAIDialect(preserve_tool_ids=True)
    frag = {"type": "function", "function": {"name": "A", "arguments": "{}"}}
    msg = check_stream(
        run(
            sse(
                delta(tool_calls=[{"index": 0, "id": "call_ok", **frag}]),
                delta(tool_calls=[{"index": 1, "id": "call_ok", **frag}]),
                delta(tool_calls=[{"index": 2, "id": "functions.A:0", **frag}]),
                finish("tool_calls"),
            ),
            dialect=dialect,
        )
    )
    assert msg is not None
    assert [b["id"] for b in msg["content"]] == ["call_ok", "toolu_0001", "toolu_0002"]


def test_r_o18_tool_names_mapped_back() -> None:
    long_name = "mcp__server__" + "x" * 70
    names = ToolNameMap.from_names([long_name])
    upstream = names.upstream(long_name)
    assert upstream != long_name
    data = sse(
        delta(
            tool_calls=[{"index": 0, "id": "c", "function": {"name": upstream, "arguments": "{}"}}]
        ),
        finish("tool_calls"),
    )
    msg = check_stream(run(data, tool_names=names))
    assert msg is not None
    assert msg["content"][0]["name"] == long_name


def test_r_s10_tool_block_streams_live() -> None:
    t = make()
    t.start()
    head = t.feed(
        sse(
            delta(
                tool_calls=[{"index": 0, "id": "c", "function": {"name": "Write", "arguments": ""}}]
            ),
            delta(tool_calls=[{"index": 0, "function": {"arguments": '{"content": "abc'}}]),
            done=False,
        )
    )
    assert [e["type"] for e in head] == ["content_block_start", "content_block_delta"]
    assert head[1]["delta"]["partial_json"] == '{"content": "abc'


def test_r_s10_interleaved_second_call_waits_for_first() -> None:
    events = run(load("interleaved_tools"), FIXTURES["interleaved_tools"])
    starts = [i for i, e in enumerate(events) if e["type"] == "content_block_start"]
    stops = [i for i, e in enumerate(events) if e["type"] == "content_block_stop"]
    # every block is stopped before the next one starts
    for start, stop in zip(starts[1:], stops, strict=False):
        assert stop < start


def test_r_s10_unrepairable_divergence_is_an_error() -> None:
    """Forwarded text that no repair can continue → error event, not corrupt input."""
    data = sse(
        delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "A", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"k": "a\\/b"'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": ", 'j': 1}"}}]),
        finish("tool_calls"),
    )
    events = run(data)
    assert events[-1]["type"] == "error"
    assert "could not be repaired" in events[-1]["error"]["message"]


def test_r_s9_q2_no_index_no_id_goes_to_last_call() -> None:
    data = sse(
        delta(tool_calls=[{"id": "x1", "function": {"name": "A", "arguments": '{"a":'}}]),
        delta(tool_calls=[{"function": {"arguments": " 1}"}}]),
        finish("tool_calls"),
    )
    msg = check_stream(run(data))
    assert msg is not None
    assert summary(msg) == (("tool_use", "A", {"a": 1}),)


def test_q8_finish_stop_with_tools_is_tool_use_and_nameless_call_dropped() -> None:
    data = sse(
        delta(tool_calls=[{"index": 0, "id": "x", "function": {"arguments": "{}"}}]),
        delta(tool_calls=[{"index": 1, "id": "y", "function": {"name": "B", "arguments": "{}"}}]),
        finish("stop"),
    )
    msg = check_stream(run(data))
    assert msg is not None
    assert summary(msg) == (("tool_use", "B", {}),)
    assert msg["stop_reason"] == "tool_use"


def test_r_m1_tool_calls_finish_without_calls_is_end_turn() -> None:
    msg = check_stream(run(sse(delta(content="hi"), finish("tool_calls"))))
    assert msg is not None
    assert msg["stop_reason"] == "end_turn"


def test_r_m1_content_filter_is_refusal() -> None:
    msg = check_stream(run(sse(delta(content="hi"), finish("content_filter"))))
    assert msg is not None
    assert msg["stop_reason"] == "refusal"


def test_r_m1_unmatched_vendor_stop_reason_is_end_turn() -> None:
    data = sse(delta(content="hi"), finish("stop", stop_reason="other"))
    msg = check_stream(run(data, Expect(stop_sequences=("END",))))
    assert msg is not None
    assert msg["stop_reason"] == "end_turn"
    assert msg["stop_sequence"] is None


def test_think_tags_whole_answer_without_tags() -> None:
    dialect = OpenAIDialect(think_tags=True)
    msg = check_stream(
        run(sse(delta(content="<"), delta(content="b>bold"), finish()), dialect=dialect)
    )
    assert msg is not None
    assert summary(msg) == (("text", "<b>bold"),)


def test_think_tags_unclosed_at_end_is_thinking() -> None:
    dialect = OpenAIDialect(think_tags=True)
    msg = check_stream(
        run(sse(delta(content="<think>still thinking</thi"), finish("length")), dialect=dialect)
    )
    assert msg is not None
    assert summary(msg) == (("thinking", "still thinking</thi"),)
    assert msg["stop_reason"] == "max_tokens"


def test_legacy_function_call_delta() -> None:
    data = sse(
        delta(function_call={"name": "A", "arguments": '{"x"'}),
        delta(function_call={"arguments": ": 2}"}),
        finish("function_call"),
    )
    msg = check_stream(run(data))
    assert msg is not None
    assert summary(msg) == (("tool_use", "A", {"x": 2}),)


# --- generated streams ---------------------------------------------------------------------


@st.composite
def fragmented(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=5))))
    return [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]


@st.composite
def upstream_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    reasoning = draw(st.lists(st.text(min_size=1, max_size=6), max_size=3))
    content = draw(st.lists(st.text(max_size=6), max_size=4))
    calls = draw(
        st.lists(st.tuples(st.sampled_from(["Read", "Bash", "Edit"]), json_objects), max_size=3)
    )
    interleave = draw(st.booleans())
    quirk = draw(st.sampled_from(["spec", "no_index", "repeat", "object_args", "whole"]))
    if interleave and quirk == "no_index":
        quirk = "spec"
    reason = draw(st.sampled_from(["stop", "tool_calls", None]))
    with_usage = draw(st.booleans())
    chunks: list[Any] = [delta(role="assistant", content=draw(st.sampled_from([None, ""])))]
    chunks += [delta(reasoning_content=r) for r in reasoning]
    chunks += [delta(content=c) for c in content]
    per_call: list[list[dict[str, Any]]] = []
    for i, (name, args) in enumerate(calls):
        head = {"index": i, "id": f"call_{i}", "type": "function"}
        if quirk == "object_args":
            per_call.append([{**head, "function": {"name": name, "arguments": args}}])
            continue
        style = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
        text = json.dumps(args, separators=style, ensure_ascii=draw(st.booleans()))
        if quirk == "whole":
            per_call.append([{**head, "function": {"name": name, "arguments": text}}])
            continue
        pieces = draw(fragmented(text))
        frags = [{**head, "function": {"name": name, "arguments": pieces[0]}}]
        for piece in pieces[1:]:
            frag: dict[str, Any] = {"index": i, "function": {"arguments": piece}}
            if quirk == "repeat":
                frag = {**head, "function": {"name": name, "arguments": piece}}
            elif quirk == "no_index":
                del frag["index"]
            frags.append(frag)
        per_call.append(frags)
    if interleave:
        order = [f for group in itertools.zip_longest(*per_call) for f in group if f is not None]
    else:
        order = [f for group in per_call for f in group]
    chunks += [delta(tool_calls=[f]) for f in order]
    chunks.append(finish(reason))
    if with_usage:
        chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    expected_blocks: list[tuple[Any, ...]] = []
    if reasoning:
        expected_blocks.append(("thinking", "".join(reasoning)))
    text = "".join(content)
    if any(c and not c.isspace() for c in content):
        expected_blocks.append(("text", text))
    expected_blocks += [("tool_use", name, args) for name, args in calls]
    expected = {
        "blocks": tuple(expected_blocks),
        "stop_reason": "tool_use" if calls else "end_turn",
        # Issue 7.11: no finish_reason is a cut stream unless the dialect allows it and the
        # usage chunk arrived.
        "cut": reason is None,
        "optional_ok": with_usage,
    }
    return sse(*chunks), expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=upstream_streams(), points=st.lists(st.integers(0, 100_000), max_size=6))
def test_generated_streams(stream: tuple[bytes, dict[str, Any]], points: list[int]) -> None:
    data, expected = stream
    events = run(data)
    if expected["cut"]:
        assert check_stream(events) is None
        assert "without a finish reason" in events[-1]["error"]["message"]
        lenient = run(data, dialect=OpenAIDialect(finish_reason_optional=True))
        msg = check_stream(lenient)
        if not expected["optional_ok"]:
            assert msg is None
            return
        assert msg is not None
        assert summary(msg) == expected["blocks"]
        return
    msg = check_stream(events)
    assert msg is not None
    assert summary(msg) == expected["blocks"]
    assert msg["stop_reason"] == expected["stop_reason"]
    cuts = sorted({p % (len(data) + 1) for p in points})
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
    assert run(data, pieces=pieces) == events
    complete = run(data, dialect=OpenAIDialect(tool_streaming="complete"))
    complete_msg = check_stream(complete)
    assert complete_msg is not None
    assert summary(complete_msg) == expected["blocks"]


@settings(max_examples=60, deadline=None)
@given(
    args=st.text(max_size=40),
    reason=st.sampled_from(["stop", "length", "tool_calls"]),
    pieces=st.integers(1, 4),
)
def test_generated_garbage_arguments_never_break_the_stream(
    args: str, reason: str, pieces: int
) -> None:
    """Whatever the model puts in arguments, the client gets a valid stream with a dict."""
    step = max(1, len(args) // pieces)
    frags = [args[i : i + step] for i in range(0, len(args), step)] or [""]
    chunks = [
        delta(
            tool_calls=[{"index": 0, "id": "c", "function": {"name": "T", "arguments": frags[0]}}]
        )
    ]
    chunks += [delta(tool_calls=[{"index": 0, "function": {"arguments": f}}]) for f in frags[1:]]
    events = run(sse(*chunks, finish(reason)))
    msg = check_stream(events)
    if msg is None:
        assert "could not be repaired" in events[-1]["error"]["message"]
        return
    assert isinstance(msg["content"][0]["input"], dict)


def test_q7_new_id_without_name_on_same_index_is_the_same_call() -> None:
    """A server inventing an id per fragment must not split one call into many."""
    data = sse(
        delta(
            tool_calls=[{"index": 0, "id": "a1", "function": {"name": "A", "arguments": '{"x"'}}]
        ),
        delta(tool_calls=[{"index": 0, "id": "a2", "function": {"arguments": ": 1}"}}]),
        finish("tool_calls"),
    )
    msg = check_stream(run(data))
    assert msg is not None
    assert summary(msg) == (("tool_use", "A", {"x": 1}),)


def test_r_s16_grace_period_finish_ignores_a_cut_trailing_line() -> None:
    t = make()
    t.start()
    t.feed(sse(delta(content="hi"), finish(), done=False) + b'data: {"choices": [')
    out = t.finish()
    assert [e["type"] for e in out][-2:] == ["message_delta", "message_stop"]


def test_q24_unrepairable_call_closed_by_text_ends_with_error_only() -> None:
    data = sse(
        delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "A", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"k": "a\\/b"'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": ", 'j': 1}"}}]),
        delta(content="text after the call"),
    )
    events = run(data)
    assert events[-1]["type"] == "error"
    check_stream(events)


_frag_text = st.sampled_from(
    ['{"a"', ": 1", "}", "{", '"x', "'", " ", "", "]", "[1,", "\n", "tr", "ue"]
)
_chaos_fragment = st.fixed_dictionaries(
    {},
    optional={
        "index": st.integers(0, 2),
        "id": st.sampled_from(["a", "b", "c", ""]),
        "function": st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from(["A", "B", ""]),
                "arguments": _frag_text | st.dictionaries(st.text(max_size=2), st.integers()),
            },
        ),
    },
)
_chaos_delta = st.fixed_dictionaries(
    {},
    optional={
        "content": st.sampled_from(["", " ", "\n", "hi", "<think>", "</think>", "x", None]),
        "reasoning_content": st.sampled_from(["", "r", None]),
        "reasoning": st.sampled_from(["", "q"]),
        "reasoning_details": st.lists(
            st.sampled_from(
                [
                    {"type": "reasoning.text", "text": "t"},
                    {"type": "reasoning.text", "text": "", "signature": "S"},
                    {"type": "reasoning.encrypted", "data": "E"},
                    {"type": "reasoning.summary", "summary": "s"},
                ]
            ),
            max_size=2,
        ),
        "refusal": st.sampled_from(["", "no"]),
        "tool_calls": st.lists(_chaos_fragment, max_size=2),
    },
)
_chaos_chunk = st.one_of(
    st.builds(lambda d: {"choices": [{"index": 0, "delta": d}]}, _chaos_delta),
    st.builds(
        finish,
        st.sampled_from(["stop", "length", "tool_calls", "content_filter", "eos", "odd"]),
    ),
    st.just({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(_chaos_chunk, max_size=12),
    end=st.sampled_from(["done", "eof", "error"]),
    mode=st.sampled_from(["live", "complete"]),
    think=st.booleans(),
)
def test_chaotic_streams_always_keep_the_grammar(
    chunks: list[dict[str, Any]], end: str, mode: str, think: bool
) -> None:
    """Whatever a server sends, clients get a grammatical stream with valid tool JSON."""
    tail: list[Any] = [{"error": {"message": "x"}}] if end == "error" else []
    data = sse(*chunks, *tail, done=end == "done")
    dialect = OpenAIDialect(tool_streaming=mode, think_tags=think)  # type: ignore[arg-type]
    events = run(data, dialect=dialect)
    check_stream(events)


# --- the text fast path (ChatStreamTranslator._plain_text) ------------------------------------


class _GeneralOnly(ChatStreamTranslator):
    """The translator with the text fast path switched off: every chunk takes the general path."""

    def _plain_text(self, chunk: dict[str, Any], out: list[Event]) -> bool:
        return False


def run_general(data: bytes, expect: Expect | None = None, **kw: Any) -> list[Event]:
    expect = expect or Expect()
    ids = itertools.count(1)
    sigs = itertools.count(1)
    t = _GeneralOnly(
        model="claude-test", input_tokens=100, dialect=kw.pop("dialect", None) or expect.dialect,
        stop_sequences=expect.stop_sequences, message_id="msg_test",
        id_factory=lambda: f"toolu_{next(ids):04d}",
        signature_factory=lambda: f"txr1.oai.sig{next(sigs)}", **kw)
    out = t.start() + t.feed(data) + t.finish()
    assert t.done
    return out


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_matches_general_path_on_fixtures(name: str) -> None:
    expect = FIXTURES[name]
    data = load(name)
    fast = run(data, expect)
    assert fast == run_general(data, expect)
    assert encode_events(fast) == encode_events(run_general(data, expect))


# A lone surrogate makes orjson refuse the chunk: the general JSON path must take it.
_text = st.text(alphabet=st.sampled_from("ab \n\t<>/think é😀\u2028\"\\\ud800"), max_size=8)


@st.composite
def near_plain_chunks(draw: st.DrawFn) -> Any:
    """Chunks shaped like the fast path's, and the shapes just outside it."""
    d: dict[str, Any] = {}
    content = draw(st.one_of(_text, st.none(), st.just([{"type": "text", "text": "p"}]),
                             st.integers(0, 3)))
    if content is not None or draw(st.booleans()):
        d["content"] = content
    if draw(st.booleans()):
        d["role"] = "assistant"
    extra = draw(st.sampled_from([None, "refusal", "reasoning_content", "tool_calls",
                                  "function_call", "reasoning"]))
    if extra == "tool_calls":
        d["tool_calls"] = [{"index": 0, "id": "call_1", "function": {"name": "Read",
                                                                      "arguments": "{}"}}]
    elif extra == "function_call":
        d["function_call"] = {"name": "Bash", "arguments": "{}"}
    elif extra is not None:
        d[extra] = draw(st.one_of(st.none(), _text))
    choice: dict[str, Any] = {"delta": d}
    index = draw(st.sampled_from(["absent", 0, None, 1]))
    if index != "absent":
        choice["index"] = index
    reason = draw(st.sampled_from(["absent", None, "", "stop", "length"]))
    if reason != "absent":
        choice["finish_reason"] = reason
    chunk: dict[str, Any] = {"object": "chat.completion.chunk", "choices": [choice]}
    more = draw(st.sampled_from([None, "second_choice", "usage", "usage_null", "error",
                                 "object_error", "no_choices", "choice_not_dict",
                                 "delta_not_dict"]))
    if more == "second_choice":
        chunk["choices"].append({"index": 1, "delta": {"content": "other"}})
    elif more == "usage":
        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 2}
    elif more == "usage_null":
        chunk["usage"] = None
    elif more == "error":
        chunk["error"] = {"message": "boom"}
    elif more == "object_error":
        chunk["object"] = "error"
    elif more == "no_choices":
        chunk["choices"] = []
    elif more == "choice_not_dict":
        chunk["choices"] = ["x"]
    elif more == "delta_not_dict":
        choice["delta"] = "x"
    return chunk


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(near_plain_chunks(), max_size=12),
    opening=st.sampled_from(["text", "whitespace", "none"]),
    think_tags=st.booleans(),
    done=st.booleans(),
)
def test_fast_path_matches_general_path_on_generated_chunks(
    chunks: list[Any], opening: str, think_tags: bool, done: bool
) -> None:
    head = {"text": [delta(content="Hi")], "whitespace": [delta(content="  ")],
            "none": []}[opening]
    data = sse(*head, *chunks, finish(), done=done)
    dialect = OpenAIDialect(think_tags=think_tags)
    fast = run(data, dialect=dialect)
    general = run_general(data, dialect=dialect)
    assert fast == general
    assert encode_events(fast) == encode_events(general)


def test_fast_path_is_taken_for_the_common_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    t = make()
    t.start()
    t.feed(sse(delta(role="assistant", content="Hi"), done=False))
    calls: list[bool] = []
    plain = ChatStreamTranslator._plain_text

    def spy(self: ChatStreamTranslator, chunk: dict[str, Any], out: list[Event]) -> bool:
        calls.append(plain(self, chunk, out))
        return calls[-1]

    # (on the class: the translator has __slots__, its methods cannot be replaced per object)
    monkeypatch.setattr(ChatStreamTranslator, "_plain_text", spy)
    out = t.feed(sse(delta(content=" there"), {"choices": [{"index": 0, "delta":
                 {"content": "!"}, "finish_reason": None, "logprobs": None}], "usage": None},
                 done=False))
    assert calls == [True, True]
    assert out == [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                               "text": " there"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                               "text": "!"}},
    ]


def test_a_chunk_orjson_refuses_still_translates() -> None:
    out = run(sse(delta(content="Hi"), delta(content="\ud83d"), finish()))
    deltas = [e["delta"]["text"] for e in out if e["type"] == "content_block_delta"]
    assert deltas == ["Hi", "\ud83d"]
    assert b'"text":"\\ud83d"' in encode_events(out)
