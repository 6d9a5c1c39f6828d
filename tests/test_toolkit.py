"""The stream toolkit in memory: collect, splice (with a Clock), usage sums, hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from txrelay.pipeline import Reply
from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.streams import CollectingSink, EventStream, StageContext, StreamEnd, current_stage
from txrelay.testing import ManualSource, text_events, tool_reply
from txrelay.toolkit import (
    CallOutcome,
    Collected,
    add_usage,
    blocks_stream,
    collect,
    splice,
    stream_of,
)


@pytest.fixture()
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def fired(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def call_events(text: str, *, input_tokens: int = 10, output: int = 5,
                stop: str = "end_turn", blocks: int = 1) -> list[Event]:
    out = [ev.message_start("msg_x", "m", ev.empty_usage(input_tokens)), ev.ping()]
    for i in range(blocks):
        out += [ev.text_block_start(i), ev.text_delta(i, f"{text}{i}"), ev.block_stop(i)]
    out += [ev.message_delta(stop, None, {"output_tokens": output}), ev.message_stop()]
    return out


def check_grammar(events: list[Event], *, closed: bool = True) -> None:
    g = StreamGrammar()
    for e in events:
        g.feed(e)
    if closed:
        g.close()


# add_usage


def test_add_usage() -> None:
    a = {"input_tokens": 3, "output_tokens": 2, "server_tool_use": {"web_search_requests": 1},
         "service_tier": "standard"}
    b = {"input_tokens": 4, "output_tokens": 5, "server_tool_use": {"web_search_requests": 2},
         "cache_read_input_tokens": 6, "service_tier": "priority", "x": None}
    assert add_usage(a, b) == {"input_tokens": 7, "output_tokens": 7, "cache_read_input_tokens": 6,
                               "server_tool_use": {"web_search_requests": 3},
                               "service_tier": "priority", "x": None}
    assert add_usage({}, {"input_tokens": 1}) == {"input_tokens": 1}


# collect


def test_collect_folds_a_stream() -> None:
    result = fired(Deferred.fromCoroutine(collect(stream_of(text_events("hello", pieces=2)))))
    (collected,) = result
    assert isinstance(collected, Collected)
    assert collected.message["content"] == [{"type": "text", "text": "hello"}]
    assert [e["type"] for e in collected.events][:2] == ["message_start", "ping"]
    lean = fired(Deferred.fromCoroutine(collect(stream_of(text_events("x")), keep_events=False)))
    assert lean[0].events == []


def test_collect_raises_the_stream_error() -> None:
    error = RelayError("overloaded_error", "busy")
    (failure,) = fired(Deferred.fromCoroutine(collect(stream_of(text_events("x")[:3], error))))
    assert failure.value is error


def test_cancelling_collect_stops_the_source() -> None:
    source = ManualSource()
    d = Deferred.fromCoroutine(collect(source.stream()))
    source.send(ev.message_start("m", "x", ev.empty_usage()))
    result = fired(d)
    assert result == []
    d.cancel()
    assert source.stopped and result[0].check(CancelledError)


def test_collect_stops_a_stream_it_cannot_fold() -> None:
    source = ManualSource()
    d = Deferred.fromCoroutine(collect(source.stream()))
    source.send(ev.message_start("m", "x", ev.empty_usage()),
                ev.tool_use_block_start(0, "t", "Read"), ev.input_json_delta(0, "{nope"))
    source.send(ev.block_stop(0))
    (failure,) = fired(d)
    assert source.stopped and "not JSON" in failure.value.message


# splice


class Calls:
    """A ``next_call`` that answers from a list of streams and records the outcomes."""

    def __init__(self, *streams: EventStream | Deferred[EventStream | None] | None) -> None:
        self.streams = list(streams)
        self.outcomes: list[CallOutcome] = []

    async def __call__(self, outcome: CallOutcome) -> EventStream | None:
        self.outcomes.append(outcome)
        nxt = self.streams.pop(0) if self.streams else None
        if isinstance(nxt, Deferred):
            return await nxt
        return nxt


def test_splice_makes_one_message_of_several_calls() -> None:
    clock = Clock()
    calls = Calls(stream_of(call_events("b", input_tokens=20, output=7, blocks=2)),
                  stream_of(call_events("c", input_tokens=30, output=9, stop="max_tokens")))
    first = stream_of(call_events("a", input_tokens=10, output=5, stop="tool_use"))
    stream, ends = watch(splice(first, calls, reactor=clock))
    sink = CollectingSink()
    stream.start(sink)
    assert sink.ended and sink.error is None
    check_grammar(sink.events)
    types = [e["type"] for e in sink.events]
    assert types.count("message_start") == 1 and types.count("message_stop") == 1
    starts = [e["index"] for e in sink.events if e["type"] == "content_block_start"]
    assert starts == [0, 1, 2, 3]
    texts = [e["delta"]["text"] for e in sink.events if e["type"] == "content_block_delta"]
    assert texts == ["a0", "b0", "b1", "c0"]
    final = [e for e in sink.events if e["type"] == "message_delta"]
    assert len(final) == 1
    assert final[0]["delta"]["stop_reason"] == "max_tokens"
    assert final[0]["usage"]["input_tokens"] == 60 and final[0]["usage"]["output_tokens"] == 21
    # each outcome is the call as it delivered it, with its own indexes
    assert [o.number for o in calls.outcomes] == [1, 2, 3]
    assert calls.outcomes[0].stop_reason == "tool_use"
    assert [b["text"] for b in calls.outcomes[1].blocks("text")] == ["b0", "b1"]
    assert calls.outcomes[1].usage["input_tokens"] == 20
    assert calls.outcomes[1].total_usage["output_tokens"] == 12
    assert [(e.outcome, e.usage["output_tokens"], e.stop_reason) for e in ends] == [
        ("complete", 21, "max_tokens")]
    assert not clock.getDelayedCalls()


def watch(stream: EventStream) -> tuple[EventStream, list[StreamEnd]]:
    ends: list[StreamEnd] = []
    return stream.on_end(ends.append), ends


def test_splice_pings_while_the_stage_works_between_calls() -> None:
    clock = Clock()
    second: Deferred[EventStream | None] = Deferred()
    calls = Calls(second)
    stream = splice(stream_of(call_events("a")), calls, reactor=clock, ping_interval=5)
    sink = CollectingSink()
    stream.start(sink)
    before = len(sink.events)
    clock.advance(4.9)
    assert len(sink.events) == before
    clock.advance(0.1)
    clock.advance(5)
    assert [e["type"] for e in sink.events[before:]] == ["ping", "ping"]
    second.callback(stream_of(call_events("b")))
    assert sink.ended and sink.error is None
    check_grammar(sink.events)
    clock.advance(60)
    assert sink.events[-1]["type"] == "message_stop" and not clock.getDelayedCalls()


def test_splice_forwards_pause_resume_and_stop_to_the_live_call() -> None:
    clock = Clock()
    one, two = ManualSource(), ManualSource()
    calls = Calls(two.stream())
    stream, ends = watch(splice(one.stream(), calls, reactor=clock))
    sink = CollectingSink()
    stream.start(sink)
    stream.pause()
    one.send(*call_events("a")[:3])
    stream.resume()
    assert one.flow == ["pause", "resume"]
    stream.pause()
    one.send(*call_events("a")[3:])
    one.end()
    # the next call starts paused because the client still is
    assert two.started and two.paused and one.flow == ["pause", "resume", "pause"]
    stream.resume()
    assert two.flow == ["pause", "resume"]
    two.send(*call_events("b", input_tokens=4, output=3)[:4])
    stream.stop()
    assert two.stopped and not one.stopped
    assert len(ends) == 1 and ends[0].outcome == "stopped"
    # usage of the finished call and the live one's start
    assert ends[0].usage["input_tokens"] == 14 and ends[0].usage["output_tokens"] == 6
    assert not clock.getDelayedCalls()


def test_stopping_while_the_stage_works_cancels_its_next_call() -> None:
    clock = Clock()
    cancelled: list[bool] = []
    pending: Deferred[EventStream | None] = Deferred(lambda _: cancelled.append(True))
    stream, ends = watch(splice(stream_of(call_events("a")), Calls(pending), reactor=clock))
    sink = CollectingSink()
    stream.start(sink)
    clock.advance(10)
    stream.stop()
    assert cancelled == [True]
    assert [e.outcome for e in ends] == ["stopped"]
    assert ends[0].usage["output_tokens"] == 5
    assert not clock.getDelayedCalls() and not sink.ended


def test_a_stream_arriving_after_stop_is_stopped() -> None:
    clock = Clock()
    late = ManualSource()
    # a next_call that ignores cancellation and answers anyway
    d: Deferred[EventStream | None] = Deferred()

    async def slow(outcome: CallOutcome) -> EventStream | None:
        try:
            return await d
        except CancelledError:
            return late.stream()

    stream = splice(stream_of(call_events("a")), slow, reactor=clock)
    stream.start(CollectingSink())
    stream.stop()
    assert late.stopped and not late.started


def test_an_error_in_a_later_call_ends_the_client_stream() -> None:
    clock = Clock()
    error = RelayError("overloaded_error", "upstream busy")
    two = ManualSource()
    stream, ends = watch(splice(stream_of(call_events("a")), Calls(two.stream()),
                                reactor=clock))
    sink = CollectingSink()
    stream.start(sink)
    two.send(*call_events("b")[:4])
    two.end(error)
    assert sink.error is error
    check_grammar([*sink.events, error.event()])
    assert [(e.outcome, e.error) for e in ends] == [("error", error)]
    assert not clock.getDelayedCalls()
    assert ends[0].usage["input_tokens"] == 20


def test_next_call_raising_relay_error_or_a_bug(logged: list[LogEvent]) -> None:
    clock = Clock()

    async def refuse(outcome: CallOutcome) -> EventStream | None:
        raise RelayError("rate_limit_error", "too many searches")

    sink = CollectingSink()
    splice(stream_of(call_events("a")), refuse, reactor=clock).start(sink)
    assert sink.error is not None and sink.error.type == "rate_limit_error"

    async def broken(outcome: CallOutcome) -> EventStream | None:
        raise ZeroDivisionError

    token = current_stage.set(StageContext("tool-intercept", "req_9"))
    try:
        stream = splice(stream_of(call_events("a")), broken, reactor=clock)
    finally:
        current_stage.reset(token)
    stream, ends = watch(stream)
    sink = CollectingSink()
    stream.start(sink)
    assert sink.error is not None and sink.error.message == (
        "stage 'tool-intercept' failed while preparing its next call (request req_9)")
    assert [(e.outcome, e.error, e.usage["output_tokens"]) for e in ends] == [
        ("error", sink.error, 5)]
    assert not clock.getDelayedCalls()

    async def confused(outcome: CallOutcome) -> Any:
        return Reply(stream=stream_of(call_events("b")))  # a Reply, not its stream

    sink = CollectingSink()
    splice(stream_of(call_events("a")), confused, reactor=clock).start(sink)
    assert sink.error is not None and "preparing its next call" in sink.error.message
    assert not clock.getDelayedCalls()
    assert any(isinstance(e.get("log_failure") and e["log_failure"].value, ZeroDivisionError)
               for e in logged)
    check_grammar([*sink.events, sink.error.event()])


def test_next_call_runs_as_the_stage_that_spliced() -> None:
    seen: list[StageContext | None] = []

    async def next_call(outcome: CallOutcome) -> EventStream | None:
        seen.append(current_stage.get())
        return None

    token = current_stage.set(StageContext("tool-intercept", "req_1"))
    try:
        stream = splice(stream_of(call_events("a")), next_call, reactor=Clock())
    finally:
        current_stage.reset(token)
    stream.start(CollectingSink())  # started outside any stage, like the server does
    assert seen == [StageContext("tool-intercept", "req_1")]


def test_the_first_call_failing_and_stop_after_the_end() -> None:
    error = RelayError("api_error", "cut")
    calls = Calls()
    stream, ends = watch(splice(stream_of(call_events("a")[:4], error), calls,
                                reactor=Clock()))
    sink = CollectingSink()
    stream.start(sink)
    stream.stop()
    assert sink.error is error and calls.outcomes == []
    assert [e.outcome for e in ends] == ["error"]


def test_splice_of_a_tool_reply_then_text() -> None:
    first = tool_reply("web_search", {"query": "twisted"})
    assert first.stream is not None

    async def next_call(outcome: CallOutcome) -> EventStream | None:
        if outcome.stop_reason != "tool_use":
            return None
        assert outcome.blocks("tool_use")[0]["input"] == {"query": "twisted"}
        return stream_of(text_events("found it"))

    sink = CollectingSink()
    splice(first.stream, next_call, reactor=Clock()).start(sink)
    check_grammar(sink.events)
    final = next(e for e in sink.events if e["type"] == "message_delta")
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == 10


@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=5))
def test_splice_keeps_the_grammar_and_every_block(blocks: list[int]) -> None:
    streams = [stream_of(call_events(f"c{n}-", blocks=b, input_tokens=n + 1, output=n))
               for n, b in enumerate(blocks)]
    calls = Calls(*streams[1:])
    sink = CollectingSink()
    stream = splice(streams[0], calls, reactor=Clock())
    stream.start(sink)
    check_grammar(sink.events)
    texts = [e["delta"]["text"] for e in sink.events if e["type"] == "content_block_delta"]
    assert texts == [f"c{n}-{i}" for n, b in enumerate(blocks) for i in range(b)]
    final = next(e for e in sink.events if e["type"] == "message_delta")
    assert final["usage"]["input_tokens"] == sum(n + 1 for n in range(len(blocks)))
    assert final["usage"]["output_tokens"] == sum(range(len(blocks)))


def test_a_stage_splices_in_blocks_it_made_itself() -> None:
    result_block = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
                    "content": [{"type": "web_search_result", "url": "https://x", "title": "x",
                                 "encrypted_content": "e"}]}
    plan = [blocks_stream([result_block]), stream_of(call_events("answer", output=4))]
    seen: list[CallOutcome] = []

    async def next_call(outcome: CallOutcome) -> EventStream | None:
        seen.append(outcome)
        return plan.pop(0) if plan else None

    sink = CollectingSink()
    splice(stream_of(call_events("q", stop="tool_use", output=3)), next_call,
           reactor=Clock()).start(sink)
    assert sink.error is None
    check_grammar(sink.events)
    starts = [(e["index"], e["content_block"]["type"]) for e in sink.events
              if e["type"] == "content_block_start"]
    assert starts == [(0, "text"), (1, "web_search_tool_result"), (2, "text")]
    assert seen[1].blocks() == [result_block] and seen[1].usage == {}
    assert seen[1].stop_reason is None
    final = next(e for e in sink.events if e["type"] == "message_delta")
    assert final["usage"]["output_tokens"] == 7 and final["delta"]["stop_reason"] == "end_turn"


def test_stopping_a_spliced_stream_that_never_started_releases_the_first_call() -> None:
    first = ManualSource()
    calls = Calls()
    stream, ends = watch(splice(first.stream(), calls, reactor=Clock()))
    stream.stop()
    assert first.stopped and not first.started and calls.outcomes == []
    assert [e.outcome for e in ends] == ["stopped"]
