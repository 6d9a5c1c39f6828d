"""Event streams: filters owned by stages, what a failing filter does, end-of-stream hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.streams import (
    CollectingSink,
    EventStream,
    StageContext,
    StreamEnd,
    current_stage,
    stream_of,
)
from txrelay.testing import ManualSource, text_events
from txrelay.upstream.streaming import UpstreamSource


@pytest.fixture()
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@attrs.define
class Boom:
    """Raises on the ``at``-th text delta (or in ``finish``)."""

    at: int = 1
    in_finish: bool = False
    error: Exception = attrs.Factory(lambda: ValueError("boom"))
    seen: int = 0

    def feed(self, event: Event) -> list[Event]:
        if event["type"] == "content_block_delta":
            self.seen += 1
            if self.seen == self.at and not self.in_finish:
                raise self.error
        return [event]

    def finish(self) -> list[Event]:
        if self.in_finish:
            raise self.error
        return []


class Upper:
    def feed(self, event: Event) -> list[Event]:
        if event["type"] == "content_block_delta":
            return [dict(event, delta=dict(event["delta"], text=event["delta"]["text"].upper()))]
        return [event]

    def finish(self) -> list[Event]:
        return []


def in_stage(name: str, build: Any) -> Any:
    """Run ``build()`` as the pipeline runs a stage named ``name``."""
    token = current_stage.set(StageContext(name, "req_42"))
    try:
        return build()
    finally:
        current_stage.reset(token)


def test_a_filter_that_raises_mid_stream_stops_the_source_and_blames_its_stage(
        logged: list[LogEvent]) -> None:
    source = ManualSource()
    stream = in_stage("shout", lambda: source.stream().through(Boom(at=2)))
    sink = CollectingSink()
    stream.start(sink)
    source.send(ev.message_start("m", "x", ev.empty_usage()), ev.text_block_start(0),
                ev.text_delta(0, "a"))
    source.send(ev.text_delta(0, "b"))  # raises in the filter
    assert source.stopped
    assert sink.ended and sink.error is not None
    assert sink.error.type == "api_error" and sink.error.status == 500
    assert sink.error.message == ("stage 'shout' failed while filtering the stream "
                                  "(request req_42)")
    assert [e["type"] for e in sink.events] == ["message_start", "content_block_start",
                                                "content_block_delta"]
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["stage"] == "shout"
    assert failures[0]["log_level"] == LogLevel.error
    assert isinstance(failures[0]["log_failure"].value, ValueError)  # the traceback is kept


@attrs.define
class Lines:
    """A toy translator: every line of the upstream body is one text delta."""

    done: bool = False

    def start(self) -> list[Event]:
        return [ev.message_start("msg", "m", ev.empty_usage()), ev.ping(),
                ev.text_block_start(0)]

    def feed(self, data: bytes) -> list[Event]:
        return [ev.text_delta(0, line) for line in data.decode().splitlines()]

    def finish(self) -> list[Event]:
        self.done = True
        return [ev.block_stop(0), ev.message_delta("end_turn", None, {"output_tokens": 1}),
                ev.message_stop()]


@attrs.define
class BodyTransport:
    stopped: bool = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


@attrs.define
class Response:
    transport: BodyTransport = attrs.Factory(BodyTransport)

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(self.transport)


def test_a_failing_filter_inside_the_upstream_read_ends_the_client_stream() -> None:
    """The old tree let Twisted's HTTP client swallow this: the client saw a cut stream."""
    clock = Clock()
    source = UpstreamSource(Lines(), clock, idle_timeout=5, commit_after=2)
    source.begin(Deferred(lambda _: None))
    response = Response()
    source.response(response)
    source.dataReceived(b"a\n")
    stream = in_stage("guard", lambda: EventStream(source).through(Boom(at=2)))
    sink = CollectingSink()
    stream.start(sink)
    source.dataReceived(b"b\nc\n")  # must not raise into Twisted
    assert response.transport.stopped
    assert sink.error is not None and "stage 'guard' failed" in sink.error.message
    assert [e["type"] for e in sink.events] == [
        "message_start", "ping", "content_block_start", "content_block_delta"]
    assert not clock.getDelayedCalls()  # no idle or commit timer left behind
    source.connectionLost(Failure(ResponseDone()))
    assert sink.error.message.startswith("stage 'guard'")


def test_finish_raising_is_blamed_on_its_stage() -> None:
    inner = in_stage("first", lambda: stream_of(text_events("hi")).through(Upper()))
    stream = in_stage("second", lambda: inner.through(Boom(in_finish=True)))
    sink = CollectingSink()
    stream.start(sink)
    assert sink.error is not None
    assert sink.error.message == ("stage 'second' failed while finishing the stream "
                                  "(request req_42)")
    assert sink.events[-1]["type"] == "message_stop"  # events before the end went through


def test_a_filter_failing_on_what_an_earlier_filter_flushed_is_blamed_on_the_later_one() -> None:
    @attrs.define
    class Flusher:
        def feed(self, event: Event) -> list[Event]:
            return [event]

        def finish(self) -> list[Event]:
            return [ev.text_delta(0, "late")]

    stream = EventStream(ManualSource()).through(Flusher(), name="a").through(
        Boom(at=1), name="b")
    sink = CollectingSink()
    stream.start(sink)
    stream.source.end()  # type: ignore[attr-defined]
    assert sink.error is not None and sink.error.message.startswith("stage 'b' failed")


def test_a_filter_may_end_the_stream_with_its_own_error(logged: list[LogEvent]) -> None:
    blocked = RelayError("permission_error", "the reply was blocked")
    source = ManualSource()
    stream = source.stream().through(Boom(at=1, error=blocked), name="guard")
    sink = CollectingSink()
    stream.start(sink)
    source.send(ev.message_start("m", "x", ev.empty_usage()), ev.text_block_start(0),
                ev.text_delta(0, "a"))
    assert source.stopped and sink.error is blocked
    assert not [e for e in logged if "log_failure" in e]


def test_explicit_names_and_unowned_filters() -> None:
    stream = stream_of(text_events("hi")).through(Upper()).through(Boom(), name="late")
    assert [o.name if o else None for o in stream.owners] == [None, "late"]
    sink = CollectingSink()
    stream.start(sink)
    assert sink.error is not None and sink.error.message == (
        "stage 'late' failed while filtering the stream")
    unowned = stream_of(text_events("hi")).through(Boom())
    sink = CollectingSink()
    unowned.start(sink)
    assert sink.error is not None and "'(unnamed)'" in sink.error.message


# end-of-stream hooks


def watched(stream: EventStream) -> tuple[EventStream, list[StreamEnd]]:
    ends: list[StreamEnd] = []
    return stream.on_end(ends.append), ends


def test_hook_on_a_complete_stream_sees_the_final_usage() -> None:
    stream, ends = watched(stream_of(text_events("hello")))
    sink = CollectingSink()
    stream.start(sink)
    assert sink.ended and sink.error is None
    assert len(ends) == 1
    end = ends[0]
    assert end.outcome == "complete" and end.stop_reason == "end_turn" and end.error is None
    assert end.usage["input_tokens"] == 10 and end.usage["output_tokens"] == 5


def test_hook_on_an_error_and_on_stop_fires_once() -> None:
    source = ManualSource()
    stream, ends = watched(source.stream())
    sink = CollectingSink()
    stream.start(sink)
    source.send(ev.message_start("m", "x", ev.empty_usage(7)))
    error = RelayError("overloaded_error", "busy")
    source.end(error)
    stream.stop()
    assert [(e.outcome, e.error) for e in ends] == [("error", error)]
    assert ends[0].usage["input_tokens"] == 7

    source = ManualSource()
    stream, ends = watched(source.stream())
    stream.start(CollectingSink())
    source.send(ev.message_start("m", "x", ev.empty_usage(3)))
    stream.stop()
    stream.stop()
    assert source.stopped
    assert [e.outcome for e in ends] == ["stopped"]
    source.stopped = False
    source.end()  # a source that ignores stop() cannot make the hook fire twice
    assert len(ends) == 1


def test_hook_when_a_later_filter_fails_and_stops_the_stream() -> None:
    stream, ends = watched(stream_of(text_events("hello")))
    failing = stream.through(Boom(at=1), name="outer")
    sink = CollectingSink()
    failing.start(sink)
    assert sink.error is not None
    assert [e.outcome for e in ends] == ["stopped"]


def test_hook_failures_are_logged_not_raised(logged: list[LogEvent]) -> None:
    def bad(_: StreamEnd) -> None:
        raise RuntimeError("ledger down")

    async def bad_later(_: StreamEnd) -> None:
        await succeed(None)
        raise RuntimeError("ledger down later")

    failed_d: Deferred[None] = Deferred()
    for hook in (bad, bad_later, lambda _: failed_d):
        sink = CollectingSink()
        stream_of(text_events("x")).on_end(hook).start(sink)
        assert sink.ended and sink.error is None
    failed_d.errback(RuntimeError("ledger down, deferred"))
    messages = [str(e["log_failure"].value) for e in logged if "log_failure" in e]
    assert messages == ["ledger down", "ledger down later", "ledger down, deferred"]


def test_pause_and_resume_pass_through_watched_and_filtered_streams() -> None:
    source = ManualSource()
    stream = source.stream().through(Upper()).on_end(lambda _: None).through(Upper())
    stream.pause()
    stream.start(CollectingSink())
    stream.resume()
    assert source.flow == ["pause", "resume"]


@attrs.define
class Splitter:
    """Splits each text delta in two and holds back the last character until block stop."""

    held: str = ""

    def feed(self, event: Event) -> list[Event]:
        if event["type"] == "content_block_delta":
            text = self.held + event["delta"]["text"]
            self.held = text[-1:]
            text = text[:-1]
            half = len(text) // 2
            return [ev.text_delta(event["index"], part) for part in (text[:half], text[half:])
                    if part]
        if event["type"] == "content_block_stop" and self.held:
            out = [ev.text_delta(event["index"], self.held), event]
            self.held = ""
            return out
        return [event]

    def finish(self) -> list[Event]:
        return []


@given(st.text(min_size=1, max_size=40), st.integers(1, 8),
       st.lists(st.integers(1, 5), max_size=20))
def test_filter_chains_do_not_depend_on_how_events_are_batched(
        text: str, pieces: int, cuts: list[int]) -> None:
    events = text_events(text, pieces=pieces)

    def run(batches: list[list[Event]]) -> list[Event]:
        source = ManualSource()
        stream = source.stream().through(Splitter()).through(Upper()).through(Splitter())
        sink = CollectingSink()
        stream.start(sink)
        for batch in batches:
            source.send(*batch)
        source.end()
        return sink.events

    batches, rest = [], list(events)
    for cut in cuts:
        if not rest:
            break
        batches.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        batches.append(rest)
    one_by_one = run([[e] for e in events])
    assert run(batches) == one_by_one == run([events])
    assert "".join(e["delta"]["text"] for e in one_by_one
                   if e["type"] == "content_block_delta") == text.upper()
