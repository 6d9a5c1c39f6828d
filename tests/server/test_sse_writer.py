"""The SSE writer in memory: pings on a clock, flow control, client loss."""

from __future__ import annotations

from typing import Any

from tests.server.conftest import failures
from tests.server.memory import FakeSource, Harness
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import RelayError
from txrelay.streams import EventStream
from txrelay.testing import text_events


def streaming(source: FakeSource, interval: float = 10.0) -> Harness:
    async def pipeline(exchange: Exchange) -> Reply:
        return Reply(stream=EventStream(source))

    return Harness.over(pipeline, ping_interval=interval)


def test_pings_follow_silence_on_the_clock() -> None:
    source = FakeSource()
    h = streaming(source, interval=10)
    conn = h.connect()
    conn.post(stream=True)
    assert source.sink is not None
    # Without the ping real streams carry after message_start: only the writer's pings count.
    events = [e for e in text_events("abc") if e["type"] != "ping"]
    source.sink.write_events(events[:1])
    h.clock.advance(9.9)
    assert conn.response().types() == ["message_start"]
    h.clock.advance(0.1)
    assert conn.response().types() == ["message_start", "ping"]
    h.clock.advance(5)
    source.sink.write_events(events[1:2])  # a write postpones the next ping
    h.clock.advance(9.9)
    assert conn.response().types() == ["message_start", "ping", "content_block_start"]
    h.clock.advance(0.1)
    assert conn.response().types()[-1] == "ping"
    source.sink.write_events(events[2:])
    source.sink.end(None)
    assert conn.response().complete
    assert h.clock.getDelayedCalls() == []


def test_pause_and_resume_reach_the_source() -> None:
    source = FakeSource()
    h = streaming(source)
    conn = h.connect()
    conn.post(stream=True)
    conn.channel.pauseProducing()  # what the transport does when its buffer is full
    assert source.paused
    conn.channel.resumeProducing()
    assert not source.paused and (source.pauses, source.resumes) == (1, 1)


def test_client_loss_stops_the_source_and_the_ping_timer(logged: list[dict[str, Any]]) -> None:
    source = FakeSource()
    h = streaming(source)
    conn = h.connect()
    conn.post(stream=True)
    assert source.sink is not None
    source.sink.write_events(text_events("abc")[:2])
    conn.lose()
    assert source.stopped
    assert h.clock.getDelayedCalls() == []
    assert not h.resource.lifecycle.live
    source.sink.write_events(text_events("abc")[2:3])  # late events are dropped quietly
    source.sink.end(None)
    assert failures(logged) == []


def test_an_error_after_the_commit_is_an_event_then_a_clean_close() -> None:
    source = FakeSource()
    h = streaming(source)
    conn = h.connect()
    conn.post(stream=True)
    assert source.sink is not None
    source.sink.write_events(text_events("abc")[:3])
    source.sink.end(RelayError("overloaded_error", "upstream busy"))
    resp = conn.response()
    assert resp.complete and resp.types()[-1] == "error"
    assert resp.events()[-1]["error"] == {"type": "overloaded_error",
                                          "message": "upstream busy"}
    assert conn.closing  # R-E4: the connection closes after an error event
    assert not source.stopped  # it ended by itself: nothing to stop
    assert h.clock.getDelayedCalls() == []
