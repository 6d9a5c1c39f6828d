"""The sans-IO half of the anthropic pass-through: frames, request edits, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakeanthropic import frame, frames, text_events
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import StreamGrammar
from txrelay.protocol.jsoncodec import loads
from txrelay.protocol.passthrough import (
    BetaPolicy,
    FrameSplitter,
    PassThroughTranslator,
    UpstreamAnthropicError,
    edit_body,
    event_error,
    message_events,
    request_bytes,
    upstream_error,
)
from txrelay.protocol.sse import RawEvent, encode_event, encode_events, plain
from txrelay.streams import CollectingSink, EventStream, ListSource

EVENTS = text_events("Hello, wörld — split me anywhere.", pieces=4, thinking="hmm",
                     tool={"id": "toolu_01", "name": "Read", "input": {"path": "/x"}})


def run(data: bytes, cuts: list[int], model: str | None = "asked"
        ) -> tuple[list[dict[str, Any]], PassThroughTranslator]:
    t = PassThroughTranslator(model=model, upstream_name="up")
    out: list[dict[str, Any]] = []
    prev = 0
    for cut in sorted(set(cuts)):
        out += t.feed(data[prev:cut])
        prev = cut
    out += t.feed(data[prev:])
    out += t.finish()
    return out, t


@settings(max_examples=200, deadline=None)
@given(eol=st.sampled_from(["\n", "\r\n", "\r"]), cuts=st.lists(st.integers(0, 4000)))
def test_any_split_gives_the_same_frames_byte_for_byte(eol: str, cuts: list[int]) -> None:
    data = frames(EVENTS, eol=eol)
    out, t = run(data, [c % (len(data) + 1) for c in cuts])
    assert t.done and t.error is None
    assert [plain(e) for e in out[1:]] == EVENTS[1:]
    # Everything but message_start is sent as the upstream framed it.
    assert encode_events(out[1:]) == frames(EVENTS[1:], eol=eol)
    assert out[0]["message"]["model"] == "asked"
    assert type(out[0]) is dict  # the rewritten message_start is encoded again


def test_every_byte_boundary() -> None:
    data = frames(EVENTS, eol="\r\n")
    for i in range(len(data) + 1):
        out, _ = run(data, [i])
        assert encode_events(out[1:]) == frames(EVENTS[1:], eol="\r\n"), i


def test_line_ends_that_change_mid_stream() -> None:
    data = frames(EVENTS[:4]) + frames(EVENTS[4:9], eol="\r\n") + frames(EVENTS[9:], eol="\r")
    for i in range(len(data) + 1):
        out, t = run(data, [i, i + 7])
        assert t.error is None, i
        assert encode_events(out[1:]) == data[len(frame(EVENTS[0])):], i


def test_message_start_kept_as_is_when_the_model_matches() -> None:
    out, _ = run(frames(EVENTS), [], model=EVENTS[0]["message"]["model"])
    assert encode_event(out[0]) == frame(EVENTS[0])


def test_comments_and_a_last_frame_without_blank_line() -> None:
    data = b": keep-alive\n\n" + frames(EVENTS)[:-2]
    out, t = run(data, [5])
    assert t.done and t.error is None
    assert out[-1]["type"] == "message_stop"


def test_error_event_before_content_keeps_anthropic_status() -> None:
    data = frames([EVENTS[0], {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}])
    out, t = run(data, [])
    assert out[-1]["type"] == "error"
    assert t.done and isinstance(t.error, UpstreamAnthropicError)
    assert t.error.status == 529
    assert t.error.body("req_x") == {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}


def test_cut_stream_and_garbage_are_errors() -> None:
    out, t = run(frames(EVENTS[:5]), [])
    assert out[-1]["type"] == "error" and t.error is not None and t.error.status == 502
    assert "before message_stop" in t.error.message
    out, t = run(frames(EVENTS[:2]) + b"event: x\ndata: not json\n\n", [])
    assert t.error is not None and "not Anthropic's JSON" in t.error.message


def test_oversized_frame() -> None:
    t = PassThroughTranslator(model=None, upstream_name="up", max_event_size=100)
    out = t.feed(b"data: " + b"x" * 200)
    assert out[-1]["type"] == "error" and t.done


def test_splitter_is_incremental() -> None:
    s = FrameSplitter()
    assert s.feed(b"data: a\r") == []
    assert s.feed(b"\ndata: b\r\n") == []
    assert s.feed(b"\r\n") == [b"data: a\r\ndata: b\r\n\r\n"]
    assert s.finish() == ([], b"")
    assert s.feed(b"data: c\r\r") == []
    assert s.finish() == ([b"data: c\r\r"], b"")


def test_filters_see_plain_events_and_their_output_is_encoded_again() -> None:
    raw = RawEvent({"type": "ping"}, raw=b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
    seen: list[Any] = []

    class Upper:
        def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
            seen.append(type(event))
            event["touched"] = True  # in place: the raw bytes must not be sent any more
            return [event]

        def finish(self) -> list[dict[str, Any]]:
            return []

    sink = CollectingSink()
    EventStream(ListSource([raw])).through(Upper()).start(sink)
    assert seen == [dict]
    assert encode_event(sink.events[0]) == b'event: ping\ndata: {"type":"ping","touched":true}\n\n'
    unfiltered = CollectingSink()
    EventStream(ListSource([raw])).start(unfiltered)
    assert encode_event(unfiltered.events[0]) == raw.raw


def test_beta_policy() -> None:
    policy = BetaPolicy(frozenset({"context-management-2025-06-27"}),
                        {"old-1": "new-1", "gone-1": ""})
    assert policy.apply("a, context-management-2025-06-27,old-1 ,gone-1,a") == "a,new-1"
    assert policy.apply("context-management-2025-06-27") is None
    assert policy.apply(None) is None


def test_edit_body_model_fields_and_untouched_original() -> None:
    body = {"model": "asked", "max_tokens": 5, "messages": [],
            "context_management": {"edits": []}, "output_config": {"effort": "high", "x": 1}}
    before = json.dumps(body)
    out, changed = edit_body(body, model="up", strip_fields=["context_management",
                                                             "output_config.x", "nope.y"])
    assert changed and json.dumps(body) == before
    assert out == {"model": "up", "max_tokens": 5, "messages": [],
                   "output_config": {"effort": "high"}}
    out, changed = edit_body(body, model=None, set_fields={"anthropic_version": "v"})
    assert "model" not in out and out["anthropic_version"] == "v"
    assert edit_body(body, model="asked", max_tokens=3)[0]["max_tokens"] == 3
    assert edit_body(body, model="asked", max_tokens=9) == (body, False)


def test_request_bytes_unchanged_when_nothing_to_edit() -> None:
    raw = b'{"model":"m",  "max_tokens":1, "messages":[{"role":"user","content":"\\u00e9"}]}'
    assert request_bytes(raw, model="m") is raw
    assert loads(request_bytes(raw, model="n"))["model"] == "n"


def test_relay_thinking_dropped_and_thinking_turned_off_when_a_tool_turn_loses_it() -> None:
    body = {"model": "m", "max_tokens": 5,
            "thinking": {"type": "adaptive"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015"},
                                              {"type": "clear_tool_uses_20250919"}]},
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t", "signature": "txr1.gem.th.abc"}]},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": [
                    {"type": "redacted_thinking", "data": "txr1.orx.e30"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
            ]}
    out, changed = edit_body(body, model="m")
    assert changed
    assert [m["role"] for m in out["messages"]] == ["user", "user", "assistant", "user"]
    assert out["messages"][2]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]
    assert out["thinking"] == {"type": "disabled"}
    assert out["context_management"] == {"edits": [{"type": "clear_tool_uses_20250919"}]}


def test_anthropic_signed_thinking_is_kept() -> None:
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "t", "signature": "EqQBCkYI"},
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]}]
    body = {"model": "m", "max_tokens": 5, "thinking": {"type": "adaptive"}, "messages": msgs}
    out, changed = edit_body(body, model="m")
    assert not changed and out["messages"] == msgs


def test_upstream_errors() -> None:
    e = upstream_error(429, b'{"type":"error","error":{"type":"rate_limit_error",'
                       b'"message":"slow down"},"request_id":"req_u"}',
                       {"retry-after": "3", "anthropic-ratelimit-requests-reset": "t",
                        "content-type": "application/json", "x-should-retry": "true"},
                       upstream_name="up")
    assert (e.status, e.type, e.message) == (429, "rate_limit_error", "slow down")
    assert dict(e.headers) == {"retry-after": "3", "anthropic-ratelimit-requests-reset": "t",
                               "x-should-retry": "true"}
    assert e.body("req_relay")["request_id"] == "req_u"
    html = upstream_error(503, b"<html>bad gateway</html>", {}, upstream_name="up")
    assert html.status == 503 and "up: upstream answered HTTP 503: <html>" in html.message
    assert html.body("req_r") == {"type": "error", "error": {
        "type": "api_error", "message": html.message}, "request_id": "req_r"}
    assert upstream_error(529, b"", {}, upstream_name="up").type == "overloaded_error"
    google = upstream_error(429, b'{"error":{"code":429,"message":"Quota exceeded",'
                            b'"status":"RESOURCE_EXHAUSTED"}}', {}, upstream_name="vtx")
    assert (google.status, google.type) == (429, "rate_limit_error")
    assert google.body("r") == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "vtx: Quota exceeded"}, "request_id": "r"}
    assert upstream_error(422, b"{}", {}, upstream_name="up").type == "invalid_request_error"


@pytest.mark.parametrize(("kind", "status"), [("overloaded_error", 529), ("api_error", 500),
                                              ("rate_limit_error", 429), ("weird", 500)])
def test_event_error_status(kind: str, status: int) -> None:
    assert event_error({"type": kind, "message": "m"}, before_commit=True).status == status


_SIG = st.sampled_from(["txr1.oai.x", "txr1.gem.th.y", "EqQBCkYI", "", "txr1."])
_BLOCK = st.one_of(
    st.builds(lambda s: {"type": "thinking", "thinking": "t", "signature": s}, _SIG),
    st.builds(lambda s: {"type": "redacted_thinking", "data": s}, _SIG),
    st.just({"type": "text", "text": "x"}),
    st.just({"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}),
)
_MESSAGE = st.one_of(
    st.builds(lambda c: {"role": "assistant", "content": c},
              st.lists(_BLOCK, min_size=1, max_size=4)),
    st.just({"role": "user", "content": "u"}),
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_MESSAGE, max_size=6),
       thinking=st.sampled_from([None, {"type": "adaptive"}, {"type": "disabled"}]))
def test_any_history_loses_exactly_the_relay_blocks(messages: list[dict[str, Any]],
                                                    thinking: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 1, "messages": messages}
    if thinking is not None:
        body["thinking"] = thinking
    before = json.dumps(body)
    out, changed = edit_body(body, model="m")
    assert json.dumps(body) == before  # the caller's body is never changed
    assert "txr1." not in json.dumps(out["messages"])
    kept = [b for m in messages if isinstance(m["content"], list) for b in m["content"]
            if not str(b.get("signature", b.get("data", ""))).startswith("txr1.")]
    assert [b for m in out["messages"] if isinstance(m["content"], list)
            for b in m["content"]] == kept
    assert all(m["content"] for m in out["messages"])
    assert changed == (json.dumps(out) != before)
    assert edit_body(out, model="m") == (out, False)  # idempotent


def test_a_message_as_events_folds_back_to_itself() -> None:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "abc"},
            {"type": "text", "text": "hi", "citations": [{"type": "char_location"}]},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
             "input": {"query": "q"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
            {"type": "text", "text": ""},
        ],
        "stop_reason": "tool_use", "stop_sequence": None, "container": {"id": "c"},
        "usage": {"input_tokens": 3, "output_tokens": 4,
                  "server_tool_use": {"web_search_requests": 1}},
    }
    before = json.dumps(message)
    events = message_events(message)
    grammar = StreamGrammar()
    acc = MessageAccumulator()
    for e in events:
        grammar.feed(e)
        acc.feed(e)
    assert json.dumps(acc.result()) == before
