"""
Any interleaving of events, flow control, silence, errors and client loss leaves the SSE
writer with nothing held: no timer, the source stopped exactly when the relay abandoned it,
and a response that is either complete or belongs to a client that left.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.server.memory import FakeSource, Harness
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import RelayError
from txrelay.streams import EventStream
from txrelay.testing import text_events

STEPS = st.lists(st.sampled_from(
    ["write", "pause", "resume", "silence", "end", "end_error", "client_lost", "write_bad"]),
    max_size=12)


@given(STEPS)
def test_every_path_releases_everything(steps: list[str]) -> None:
    source = FakeSource()

    async def pipeline(exchange: Exchange) -> Reply:
        return Reply(stream=EventStream(source))

    h = Harness.over(pipeline, ping_interval=1.0)
    conn = h.connect()
    conn.post(stream=True)
    assert source.sink is not None
    events = text_events("some words to stream", pieces=20)
    sent = 1
    source.sink.write_events(events[:1])  # committed
    ended = abandoned = gone = failed = False
    for step in steps:
        if ended or abandoned:
            break
        if step == "write" and sent < len(events) - 1:
            source.sink.write_events(events[sent:sent + 1])
            sent += 1
        elif step == "pause":
            conn.channel.pauseProducing()
        elif step == "resume":
            conn.channel.resumeProducing()
        elif step == "silence":
            h.clock.advance(1.0)
        elif step == "end":
            source.sink.write_events(events[sent:])
            source.sink.end(None)
            ended = True
        elif step == "end_error":
            source.sink.end(RelayError("overloaded_error", "busy"))
            ended = failed = True
        elif step == "client_lost":
            conn.lose()
            abandoned = gone = True
        elif step == "write_bad":
            source.sink.write_events([{"type": "ping", "bad": object()}])
            abandoned = failed = True
    if not (ended or abandoned):
        source.sink.write_events(events[sent:])
        source.sink.end(None)
    assert h.clock.getDelayedCalls() == []
    assert source.stopped == abandoned
    assert not h.resource.lifecycle.live
    if not gone:
        resp = conn.response()
        assert resp.complete
        assert resp.types()[0] == "message_start"
        assert (resp.types()[-1] == "error") == failed
        assert conn.closing == failed
        if not failed:
            assert resp.types()[-1] == "message_stop"
