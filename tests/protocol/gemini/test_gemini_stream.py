"""G→A stream translation (mapping.md §6, §7, §8.2, §9.2): fixtures, unit cases, fuzzing."""

from __future__ import annotations

import itertools
import json
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import json_values
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.gemini import GeminiStreamTranslator, GeminiToolNames, signatures
from txrelay.protocol.sse import encode_events

from .streams import FIXTURES, Expect, load, names

MODEL = "gemini-2.5-flash"


def make(**kw: Any) -> GeminiStreamTranslator:
    """A translator with deterministic thinking signatures."""
    sigs = itertools.count(1)
    kw.setdefault("tool_names", names())
    return GeminiStreamTranslator(
        model="claude-test",
        input_tokens=100,
        message_id="msg_test",
        upstream_model=MODEL,
        signature_factory=lambda: f"txr1.gem.none.sig{next(sigs)}",
        **kw,
    )


def run(data: bytes, pieces: list[bytes] | None = None, **kw: Any) -> list[Event]:
    t = make(**kw)
    out = t.start()
    for piece in pieces if pieces is not None else [data]:
        out += t.feed(piece)
    out += t.finish()
    assert t.done
    assert t.feed(b"data: {}\n\n") == [] and t.finish() == []
    return out


def sse(*chunks: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


def parts(*ps: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(ps)}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


def check_stream(events: list[Event]) -> dict[str, Any] | None:
    """Grammar and accumulation; the message (``None`` when the stream ended in error)."""
    grammar = StreamGrammar()
    for e in events:
        grammar.feed(e)
    grammar.close()
    if events[-1]["type"] == "error":
        assert not any(e["type"] in ("message_delta", "message_stop") for e in events)
        return None
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    msg = acc.result()
    for block in msg["content"]:
        if block["type"] == "thinking":
            assert block["signature"].startswith("txr1.gem.")
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
    assert msg["stop_sequence"] is None
    for key, value in expect.usage.items():
        assert msg["usage"][key] == value, key
    return msg


NAMES = sorted(FIXTURES)


# --- fixture streams ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fixture_expected(name: str) -> None:
    events = run(load(name))
    check_expect(events, FIXTURES[name])
    assert events[0]["type"] == "message_start"
    assert events[1] == {"type": "ping"}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_every_byte_boundary(name: str) -> None:
    """Split at every single byte boundary: identical events (SSE framing is ours)."""
    data = load(name)
    whole = run(data)
    for cut in range(len(data) + 1):
        assert run(data, [data[:cut], data[cut:]]) == whole, cut
    assert run(data, [data[i : i + 1] for i in range(len(data))]) == whole


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_fixture_line_endings(name: str, eol: bytes) -> None:
    data = load(name).replace(b"\r\n", b"\n")
    assert run(data.replace(b"\n", eol)) == run(data)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_fixture_split_invariance(name: str, points: list[int]) -> None:
    data = load(name)
    cuts = sorted({p % (len(data) + 1) for p in points})
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
    assert run(data, pieces) == run(data)


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
    """The official SDK's accumulator builds the same message from our SSE encoding."""
    expect = FIXTURES[name]
    events = run(load(name))
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


def test_r_gs1_message_start_carries_prompt_tokens_of_a_peeked_chunk() -> None:
    t = make()
    assert t.feed(load("text_crlf")) == []  # held until start (R-X9 peeking)
    start = t.start()
    usage = start[0]["message"]["usage"]
    assert usage["input_tokens"] == 52
    assert usage["cache_read_input_tokens"] == 2048
    assert start[2]["type"] == "content_block_start"


def test_r_gs1_estimate_when_nothing_came_yet() -> None:
    assert make().start()[0]["message"]["usage"]["input_tokens"] == 100


def test_r_gs7_empty_body_is_an_error() -> None:
    events = run(b"")
    assert events[-1]["type"] == "error"
    assert "empty stream" in events[-1]["error"]["message"]


def test_finish_seen_after_finish_reason_only() -> None:
    t = make()
    t.start()
    t.feed(sse(parts({"text": "a"})))
    assert not t.finish_seen
    t.feed(sse(parts({"text": "b"}, finish="STOP")))
    assert t.finish_seen and not t.done
    assert t.finish()[-1]["type"] == "message_stop"


def test_r_m2_function_call_wins_over_stop() -> None:
    msg = check_stream(run(sse(parts({"functionCall": {"name": "Read", "args": {"p": 1}}},
                                     finish="STOP"))))
    assert msg is not None and msg["stop_reason"] == "tool_use"


def test_r_m2_max_tokens_wins_over_tool_use() -> None:
    msg = check_stream(run(sse(parts({"functionCall": {"name": "Read", "args": {}}},
                                     finish="MAX_TOKENS"))))
    assert msg is not None and msg["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("reason", ["SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                                    "RECITATION", "IMAGE_SAFETY", "MODEL_ARMOR"])
def test_r_m2_blocking_reasons_are_refusals_naming_the_reason(reason: str) -> None:
    msg = check_stream(run(sse({"candidates": [{"finishReason": reason, "index": 0}]})))
    assert msg is not None
    assert msg["stop_reason"] == "refusal"
    assert reason in msg["content"][-1]["text"]


@pytest.mark.parametrize("reason", ["OTHER", "FINISH_REASON_UNSPECIFIED", "TOO_MANY_TOOL_CALLS",
                                    "SOMETHING_NEW"])
def test_r_m2_other_reasons_end_the_turn(reason: str) -> None:
    msg = check_stream(run(sse(parts({"text": "x"}, finish=reason))))
    assert msg is not None and msg["stop_reason"] == "end_turn"
    assert summary(msg) == (("text", "x"),)


def test_r_m2_malformed_call_after_content_adds_no_note() -> None:
    msg = check_stream(run(sse(parts({"text": "I will"}, finish="MALFORMED_FUNCTION_CALL"))))
    assert msg is not None and summary(msg) == (("text", "I will"),)


def test_r_x13_tool_ids_stable_and_derived_from_the_response() -> None:
    """Two relay instances translating the same response mint the same ids."""
    data = load("parallel_calls")
    ids = []
    for message_id in ("msg_a", "msg_b"):
        t = GeminiStreamTranslator(model="m", input_tokens=1, message_id=message_id)
        events = t.start() + t.feed(data) + t.finish()
        ids.append([e["content_block"]["id"] for e in events
                    if e["type"] == "content_block_start"
                    and e["content_block"]["type"] == "tool_use"])
    assert ids[0] == ids[1]
    assert ids[0][0] == "toolu_gm_fc-a1"
    assert ids[0][1].startswith("toolu_gx_")
    assert all(len(i) <= 64 for i in ids[0])


def test_r_x13_repeated_gemini_id_is_not_reused() -> None:
    call = {"functionCall": {"name": "Read", "args": {}, "id": "same"}}
    msg = check_stream(run(sse(parts(call, call, finish="STOP"))))
    assert msg is not None
    ids = [b["id"] for b in msg["content"] if b["type"] == "tool_use"]
    assert len(set(ids)) == 2


def test_r_gs3_carrier_precedes_its_signed_call_only() -> None:
    events = run(load("parallel_calls"))
    msg = check_stream(events)
    assert msg is not None
    carrier, first, second = msg["content"]
    decoded = signatures.decode_call(carrier["signature"], MODEL)
    assert decoded == (first["id"], "U0lHLWZpcnN0")
    assert second["type"] == "tool_use"


def test_r_gs3_thought_signature_on_the_thinking_block() -> None:
    msg = check_stream(run(load("trailing_thought_signature")))
    assert msg is not None
    assert signatures.decode_thought(msg["content"][0]["signature"], MODEL) == "VGhvdWdodFNpZw=="


def test_signed_thought_is_not_merged_with_the_next_thought() -> None:
    msg = check_stream(run(sse(
        parts({"text": "a", "thought": True, "thoughtSignature": "QQ=="}),
        parts({"text": "b", "thought": True}, finish="STOP"),
    )))
    assert msg is not None
    assert summary(msg) == (("thinking", "a"), ("thinking", "b"))
    assert signatures.decode_thought(msg["content"][0]["signature"], MODEL) == "QQ=="
    assert msg["content"][1]["signature"].startswith("txr1.gem.none.")


def test_r_u2_usage_is_overwritten_not_summed() -> None:
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    msg = check_stream(run(sse(parts({"text": "a"}, usageMetadata=usage),
                               parts({"text": "b"}, usageMetadata=usage, finish="STOP"))))
    assert msg is not None
    assert msg["usage"]["output_tokens"] == 5
    assert msg["usage"]["input_tokens"] == 10


def test_r_u2_no_usage_falls_back_to_estimates() -> None:
    msg = check_stream(run(sse(parts({"text": "abcdefgh"}, finish="STOP"))))
    assert msg is not None
    assert msg["usage"]["input_tokens"] == 100
    assert msg["usage"]["output_tokens"] == 2


def test_whitespace_only_text_opens_no_block() -> None:
    events = run(sse(parts({"text": "\n"}, {"text": " "}, finish="STOP")))
    assert not any(e["type"] == "content_block_start" for e in events)


def test_unknown_names_pass_through() -> None:
    msg = check_stream(run(sse(parts({"functionCall": {"name": "NotOffered", "args": {}}},
                                     finish="STOP")), tool_names=GeminiToolNames()))
    assert msg is not None and msg["content"][0]["name"] == "NotOffered"


def test_args_given_as_a_json_string_are_decoded() -> None:
    msg = check_stream(run(sse(parts({"functionCall": {"name": "Read", "args": '{"a": 1}'}},
                                     finish="STOP"))))
    assert msg is not None and msg["content"][0]["input"] == {"a": 1}


def test_garbage_line_is_an_api_error() -> None:
    events = run(b"proxy error\n\n")
    assert events[-1]["error"]["type"] == "api_error"
    assert "malformed stream line" in events[-1]["error"]["message"]


def test_invalid_json_is_an_api_error() -> None:
    events = run(b'data: {"candidates": [\n\n')
    assert events[-1]["error"]["type"] == "api_error"
    assert "invalid JSON" in events[-1]["error"]["message"]


# --- hostile input ------------------------------------------------------------------------

_part_values = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "text": json_values | st.text(max_size=5),
        "thought": st.booleans() | json_values,
        "thoughtSignature": st.text(max_size=8) | json_values,
        "functionCall": json_values | st.fixed_dictionaries({}, optional={
            "name": st.text(max_size=6) | json_values,
            "args": json_values,
            "id": st.text(max_size=6) | json_values,
        }),
        "executableCode": json_values,
        "codeExecutionResult": json_values,
    }),
)
_chunks = st.fixed_dictionaries({}, optional={
    "candidates": json_values | st.lists(st.fixed_dictionaries({}, optional={
        "index": st.sampled_from([0, 1, None, "0"]),
        "content": json_values | st.fixed_dictionaries({}, optional={
            "parts": json_values | st.lists(_part_values, max_size=4),
        }),
        "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "X"]) | json_values,
        "finishMessage": json_values,
    }), max_size=2),
    "usageMetadata": json_values | st.fixed_dictionaries({}, optional={
        k: json_values | st.integers(-5, 10**6)
        for k in ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount",
                  "cachedContentTokenCount", "toolUsePromptTokenCount")
    }),
    "promptFeedback": json_values | st.fixed_dictionaries({"blockReason": json_values}),
    "responseId": json_values,
    "error": json_values,
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(_chunks | json_values, max_size=6), cut=st.integers(0, 10**6))
def test_hostile_chunks_end_cleanly(chunks: list[Any], cut: int) -> None:
    """Any JSON in any shape: events that follow the grammar, never an exception."""
    data = sse(*chunks)
    cut %= len(data) + 1
    events = run(data, [data[:cut], data[cut:]])
    check_stream(events)
    assert events[-1]["type"] in ("message_stop", "error")
    if events[-1]["type"] == "error":
        assert events[-1]["error"]["type"] in (
            "api_error", "invalid_request_error", "overloaded_error", "rate_limit_error",
            "authentication_error", "permission_error", "not_found_error", "timeout_error",
            "conflict_error", "request_too_large",
        )


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_hostile_bytes_end_cleanly(data: bytes) -> None:
    check_stream(run(data))


def test_cut_off_event_after_finish_reason_is_harmless() -> None:
    """The transport may end the stream after finishReason while a chunk is half read."""
    data = sse(parts({"text": "done"}, finish="STOP")) + b'data: {"usageMeta'
    msg = check_stream(run(data))
    assert msg is not None and summary(msg) == (("text", "done"),)


def test_cut_off_event_without_finish_reason_is_an_error() -> None:
    events = run(sse(parts({"text": "x"})) + b'data: {"cand')
    assert events[-1]["type"] == "error"


def test_malformed_call_is_flagged_for_a_retry_before_start() -> None:
    t = make()
    assert t.feed(load("malformed_call")) == []
    assert t.malformed_call and t.finish_seen
    other = make()
    other.feed(sse(parts({"text": "x"}, finish="MALFORMED_FUNCTION_CALL")))
    assert not other.malformed_call
