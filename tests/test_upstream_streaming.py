"""UpstreamSource in memory: commit decision, flow control, timeouts (with a fake clock)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.streams import CollectingSink
from txrelay.upstream.streaming import UpstreamSource


@attrs.define
class LineTranslator:
    """A toy translator: each line ``t:<text>`` is a text delta, ``e:`` an error, ``f`` finish."""

    started: bool = False
    opened: bool = False
    done: bool = False
    finish_seen: bool = False

    def start(self) -> list[Event]:
        self.started = True
        return [ev.message_start("msg", "m", ev.empty_usage()), ev.ping()]

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for line in data.decode().splitlines():
            if line.startswith("t:"):
                if not self.opened:
                    self.opened = True
                    out.append(ev.text_block_start(0))
                out.append(ev.text_delta(0, line[2:]))
            elif line.startswith("e:"):
                self.done = True
                out.append(RelayError("overloaded_error", line[2:]).event())
            elif line == "f":
                self.finish_seen = True
        return out

    def finish(self) -> list[Event]:
        self.done = True
        out = [ev.block_stop(0)] if self.opened else []
        return [*out, ev.message_delta("end_turn", None, {"output_tokens": 1}), ev.message_stop()]


@attrs.define
class FakeTransport:
    paused: int = 0
    resumed: int = 0
    stopped: bool = False

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped = True


@attrs.define
class FakeResponse:
    transport: FakeTransport = attrs.Factory(FakeTransport)
    protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def make(clock: Clock) -> tuple[UpstreamSource, Deferred[Any], list[Any]]:
    source = UpstreamSource(LineTranslator(), clock, idle_timeout=5, commit_after=2,
                            finish_grace=1)
    request: Deferred[Any] = Deferred(lambda d: None)
    source.begin(request)
    ready: list[Any] = []
    source.ready.addBoth(ready.append)
    return source, request, ready


def streaming(clock: Clock, first: bytes = b"t:a\n") -> tuple[UpstreamSource, FakeResponse,
                                                                CollectingSink]:
    """A source whose response answered, fed ``first``, and started into a sink."""
    source, _, _ = make(clock)
    response = FakeResponse()
    source.response(response)
    source.dataReceived(first)
    sink = CollectingSink()
    source.start(sink)
    return source, response, sink


def test_commits_at_first_content_not_at_headers() -> None:
    clock = Clock()
    source, _, ready = make(clock)
    response = FakeResponse()
    source.response(response)
    assert ready == []
    source.dataReceived(b"f-noise\n")
    assert ready == []
    source.dataReceived(b"t:hello\n")
    assert ready == [None]
    sink = CollectingSink()
    source.start(sink)
    assert [e["type"] for e in sink.events] == [
        "message_start", "ping", "content_block_start", "content_block_delta"]
    source.connectionLost(Failure(ResponseDone()))
    assert sink.ended and sink.error is None
    assert sink.events[-1]["type"] == "message_stop"


def test_error_before_content_fails_ready_with_an_http_error() -> None:
    clock = Clock()
    source, _, ready = make(clock)
    response = FakeResponse()
    source.response(response)
    source.dataReceived(b"e:busy\n")
    assert isinstance(ready[0], Failure) and ready[0].value.status == 529
    assert response.transport.stopped


def test_commit_deadline_starts_the_stream_before_headers() -> None:
    clock = Clock()
    source, _, ready = make(clock)
    clock.advance(2)
    assert ready == [None]
    sink = CollectingSink()
    source.start(sink)
    assert [e["type"] for e in sink.events] == ["message_start", "ping"]
    # A later upstream failure becomes the stream's error (the status is committed).
    source.fail(RelayError("rate_limit_error", "slow down"))
    assert sink.ended and sink.error is not None and sink.error.type == "rate_limit_error"


def test_flow_control_reaches_the_upstream_transport() -> None:
    clock = Clock()
    source, response, _ = streaming(clock)
    paused, resumed = response.transport.paused, response.transport.resumed
    source.pause()
    source.pause()
    assert response.transport.paused == paused + 2
    clock.advance(100)  # no idle timeout while the client holds us back
    source.resume()
    assert response.transport.resumed == resumed + 1
    source.resume()
    assert response.transport.resumed == resumed + 1


def test_idle_timeout_ends_with_timeout_error() -> None:
    clock = Clock()
    source, response, sink = streaming(clock)
    clock.advance(4.9)
    assert not sink.ended
    source.dataReceived(b"t:b\n")
    clock.advance(4.9)
    assert not sink.ended
    clock.advance(0.2)
    assert sink.ended and sink.error is not None and sink.error.type == "timeout_error"
    assert response.transport.stopped


def test_finish_grace_when_upstream_keeps_the_connection_open() -> None:  # R-S16
    clock = Clock()
    _, response, sink = streaming(clock, b"t:a\nf\n")
    clock.advance(1)
    assert sink.ended and sink.error is None
    assert sink.events[-1]["type"] == "message_stop"
    assert response.transport.stopped


def test_client_gone_cancels_request_or_stops_transport() -> None:
    clock = Clock()
    source, request, ready = make(clock)
    cancelled: list[Any] = []
    request.addErrback(cancelled.append)
    source.stop()
    assert cancelled and cancelled[0].check(CancelledError)
    assert ready[0].check(CancelledError)

    source2, response, _ = streaming(clock)
    source2.stop()
    assert response.transport.stopped
    assert clock.getDelayedCalls() == []


def test_committed_events_without_a_sink_pause_the_upstream() -> None:
    """A stage that awaits after proceed(): the relay stops reading until the stream starts."""
    clock = Clock()
    source, _, ready = make(clock)
    response = FakeResponse()
    source.response(response)
    source.dataReceived(b"t:a\n")
    assert ready == [None]
    assert response.transport.paused == 1 and response.transport.resumed == 0
    source.dataReceived(b"t:b\n")  # the rest of a read already in memory
    assert response.transport.paused == 1
    clock.advance(60)  # the stage's delay: no idle timeout while we hold the upstream
    assert not response.transport.stopped
    sink = CollectingSink()
    source.start(sink)
    assert response.transport.resumed == 1
    assert [e["type"] for e in sink.events][-3:] == [
        "content_block_start", "content_block_delta", "content_block_delta"]
    source.dataReceived(b"t:c\n")  # delivered straight to the sink, no new pause
    assert response.transport.paused == 1
    assert sink.events[-1]["delta"]["text"] == "c"


def test_client_pause_while_held_does_not_resume_early() -> None:
    clock = Clock()
    source, _, _ = make(clock)
    response = FakeResponse()
    source.response(response)
    source.dataReceived(b"t:a\n")
    source.pause()
    source.resume()  # still no sink: the upstream stays paused
    assert response.transport.resumed == 0
    source.start(CollectingSink())
    assert response.transport.resumed == 1


def _bare(body: bytes) -> RelayError:
    return RelayError("invalid_request_error", f"bare body {body!r}")


@pytest.mark.parametrize("body", [b"", b"  \n", b'{"error": {"message": "too long"}}'])
def test_a_2xx_body_that_is_not_an_event_stream_goes_to_the_error_mapping(body: bytes) -> None:
    clock = Clock()
    source = UpstreamSource(LineTranslator(), clock, idle_timeout=5, commit_after=2,
                            bare_body=_bare)
    source.begin(Deferred())
    ready: list[Any] = []
    source.ready.addBoth(ready.append)
    response = FakeResponse()
    source.response(response)
    if body:
        source.dataReceived(body[:3])
        source.dataReceived(body[3:])
    source.connectionLost(Failure(ResponseDone()))
    assert isinstance(ready[0], Failure)
    expected = body if body.strip() else b""
    assert ready[0].value.message == f"bare body {expected!r}"
    assert ready[0].value.status == 400
    assert clock.getDelayedCalls() == []


def test_a_sink_started_from_the_commit_itself_is_not_held() -> None:
    clock = Clock()
    source, _, _ = make(clock)
    sink = CollectingSink()
    source.ready.addCallback(lambda _: source.start(sink))
    response = FakeResponse()
    source.response(response)
    source.dataReceived(b"t:a\n")
    assert sink.events and response.transport.paused == 0


def test_a_request_that_failed_while_being_sent_leaves_no_timer() -> None:
    clock = Clock()
    source = UpstreamSource(LineTranslator(), clock, idle_timeout=5, commit_after=2)
    failures: list[Any] = []
    source.ready.addErrback(failures.append)
    source.fail(RelayError("api_error", "refused", status=502))  # before begin() ran
    source.begin(Deferred())
    assert failures and failures[0].value.status == 502
    assert clock.getDelayedCalls() == []


def test_once_the_body_is_an_event_stream_the_bare_body_mapping_is_let_go() -> None:
    # The mapping closes over the backend's call and the upstream request body; a held-open
    # stream must not keep them (issue 13).
    import gc
    import weakref

    class Call:
        def error(self, body: bytes) -> RelayError:
            return _bare(body)

    call = Call()
    alive = weakref.ref(call)
    clock = Clock()
    source = UpstreamSource(LineTranslator(), clock, idle_timeout=5, commit_after=2,
                            bare_body=call.error)
    del call
    source.begin(Deferred())
    source.response(FakeResponse())
    source.dataReceived(b"  \n")  # blank: not decided yet
    gc.collect()
    assert alive() is not None
    source.dataReceived(b"t:a\n")
    gc.collect()
    assert alive() is None
    sink = CollectingSink()
    source.start(sink)
    source.connectionLost(Failure(ResponseDone()))
    assert sink.ended and sink.error is None
    assert [e["type"] for e in sink.events][-1] == "message_stop"
