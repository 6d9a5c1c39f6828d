"""
Every exit path of a reply releases what it holds (7.3): the upstream stream is stopped,
the producer unregistered, the ping timer cancelled, and the client gets a proper answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.conftest import failures
from tests.server.memory import Connection, FakeSource, Harness
from txrelay.pipeline import Exchange, Reply
from txrelay.streams import EventSink, EventStream
from txrelay.testing import text_events


def serving(source: Any, headers: list[tuple[str, str]] | None = None) -> Harness:
    async def pipeline(exchange: Exchange) -> Reply:
        return Reply(stream=EventStream(source), headers=list(headers or []))

    return Harness.over(pipeline, metrics=True)


def live_streams(h: Harness) -> float:
    assert h.resource.metrics is not None
    for line in h.resource.metrics.render().decode().splitlines():
        if line.startswith("txrelay_streams_active "):
            return float(line.split()[1])
    raise AssertionError("no txrelay_streams_active gauge")


def assert_released(h: Harness, conn: Connection, source: FakeSource) -> None:
    assert source.stopped, "the upstream stream was left running"
    assert conn.channel.requests == [] or conn.channel.requests[0].producer is None
    assert h.clock.getDelayedCalls() == [], "a ping timer was left armed"
    assert not h.resource.lifecycle.live
    assert live_streams(h) == 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_reply_header_that_is_not_latin1(stream: bool, logged: list[dict[str, Any]]) -> None:
    source = FakeSource()
    h = serving(source, headers=[("x-note", "snow \u2603")])
    conn = h.connect()
    conn.post(stream=stream)
    if not stream:  # the headers are sent with the folded message, after the stream
        assert source.sink is not None
        source.sink.write_events(text_events("abc"))
        source.sink.end(None)
    resp = conn.response()
    assert resp.status == 500 and resp.complete
    assert resp.json()["error"]["type"] == "api_error"
    assert "UnicodeEncodeError" not in resp.body.decode()
    assert "cache-control" not in resp.headers  # no SSE leftovers on the JSON error
    assert source.stopped or not stream
    assert h.clock.getDelayedCalls() == []
    assert len(failures(logged)) == 1


class FailingStart(FakeSource):
    """A source whose start raises after it already wrote (or not)."""

    def __init__(self, write_first: bool) -> None:
        super().__init__()
        self.write_first = write_first

    def start(self, sink: EventSink) -> None:
        super().start(sink)
        if self.write_first:
            sink.write_events(text_events("abc")[:2])
        raise RuntimeError("boom in start")


@pytest.mark.parametrize("write_first", [False, True])
def test_an_error_inside_writer_start(write_first: bool, logged: list[dict[str, Any]]) -> None:
    source = FailingStart(write_first)
    h = serving(source)
    conn = h.connect()
    conn.post(stream=True)
    resp = conn.response()
    assert resp.complete, "the response was left unfinished"
    if write_first:  # committed: the error is an event, then the connection closes
        assert resp.status == 200 and resp.types()[-1] == "error"
        assert resp.events()[-1]["error"]["type"] == "api_error"
        assert conn.closing
    else:
        assert resp.status == 500 and resp.json()["error"]["type"] == "api_error"
    assert "boom" not in resp.body.decode()
    assert_released(h, conn, source)
    assert len(failures(logged)) == 1


def test_an_error_while_writing_ends_the_stream_and_stops_the_source(
    logged: list[dict[str, Any]],
) -> None:
    source = FakeSource()
    h = serving(source)
    conn = h.connect()
    conn.post(stream=True)
    assert source.sink is not None
    # message_start and content_block_start, without the ping a real stream has between them
    source.sink.write_events([e for e in text_events("abc") if e["type"] != "ping"][:2])
    unencodable = {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": object()}}
    source.sink.write_events([unencodable])
    resp = conn.response()
    assert resp.complete and resp.types() == ["message_start", "content_block_start", "error"]
    assert resp.events()[-1]["error"]["type"] == "api_error"
    assert conn.closing
    assert_released(h, conn, source)
    assert len(failures(logged)) == 1


def test_a_stream_that_cannot_be_folded_stops_the_source(
    logged: list[dict[str, Any]],
) -> None:
    source = FakeSource()
    h = serving(source)
    conn = h.connect()
    conn.post()
    assert source.sink is not None
    source.sink.write_events([{"type": "content_block_delta", "index": 7,
                               "delta": {"type": "text_delta", "text": "orphan"}}])
    resp = conn.response()
    assert resp.status == 500 and resp.json()["error"]["type"] == "api_error"
    assert "message_start" in resp.json()["error"]["message"]  # names what was wrong
    assert_released(h, conn, source)
    assert failures(logged) == []  # the upstream's fault, not a relay bug


def test_a_non_streaming_client_leaving_stops_the_source() -> None:
    source = FakeSource()
    h = serving(source)
    conn = h.connect()
    conn.post()
    conn.lose()
    assert_released(h, conn, source)
