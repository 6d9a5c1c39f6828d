"""txrelay.testing behaves like the relay: pings where real streams have them, clocks, toolkit."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock, deferLater

from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.events import Event
from txrelay.streams import stream_of
from txrelay.testing import (
    ManualSource,
    PingAfterStart,
    run_stage,
    text_events,
    text_reply,
    tool_reply,
)
from txrelay.toolkit import CallOutcome, EventStream, call_again, splice


class DeltaOnly:
    """A filter with the bug that crashed on the real relay: it assumes every event after
    ``message_start`` is a block event."""

    def __init__(self) -> None:
        self.started = False

    def feed(self, event: Event) -> list[Event]:
        if self.started and event["type"] not in ("message_delta", "message_stop"):
            _ = event["index"]  # KeyError on a ping
        self.started = True
        return [event]

    def finish(self) -> list[Event]:
        return []


class Careless:
    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        return (await proceed(exchange)).with_filter(DeltaOnly())


def test_helper_streams_carry_the_ping_real_streams_carry() -> None:
    for reply in (text_reply("hi"), tool_reply("Read", {"path": "a"})):
        assert reply.stream is not None
        events = run_stage(lambda ex, proceed: proceed(ex), reply=reply).events
        assert [e["type"] for e in events[:2]] == ["message_start", "ping"]
        assert [e["type"] for e in events].count("ping") == 1


def test_a_stage_that_trips_on_the_ping_fails_in_run_stage() -> None:
    """On the old tree run_stage passed this stage, which then failed on the real relay."""
    with pytest.raises(KeyError):
        run_stage(Careless(), reply=text_reply("hello"))
    bare = [e for e in text_events("hello") if e["type"] != "ping"]
    with pytest.raises(KeyError):
        run_stage(Careless(), reply=Reply(stream=stream_of(bare)))


def test_ping_after_start_does_not_double_a_ping() -> None:
    f = PingAfterStart()
    out = [o for e in text_events("a") for o in f.feed(e)]
    assert [e["type"] for e in out].count("ping") == 1


def test_run_stage_with_a_clock_runs_a_spliced_stage() -> None:
    clock = Clock()

    class Twice:
        """Calls the model, works for 12 s (a search), calls it again and splices both."""

        async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
            reply = await proceed(exchange)
            assert reply.stream is not None

            async def next_call(outcome: CallOutcome) -> EventStream | None:
                if outcome.number > 1:
                    return None
                await deferLater(clock, 12, lambda: None)
                return await call_again(proceed, exchange)

            return reply.with_stream(splice(reply.stream, next_call, reactor=clock,
                                            ping_interval=5))

    answers = iter(["first.", "second."])
    result = run_stage(Twice(), reply=lambda ex: text_reply(next(answers)), clock=clock)
    assert result.text == "first.second."
    assert len(result.calls) == 2
    types = [e["type"] for e in result.events]
    assert types.count("message_start") == 1
    # the first call's ping, two while the stage worked, and the second call's
    assert types.count("ping") == 4
    assert result.message is not None and result.message["usage"]["output_tokens"] == 10
    assert result.message["content"] == [{"type": "text", "text": "first."},
                                          {"type": "text", "text": "second."}]


def test_run_stage_with_a_clock_gives_up_on_a_stream_that_never_ends() -> None:
    source = ManualSource()

    async def hang(exchange: Exchange, proceed: Any) -> Reply:
        return Reply(stream=source.stream())

    with pytest.raises(AssertionError, match="did not end within 60 simulated seconds"):
        run_stage(hang, clock=Clock(), max_seconds=60)
    with pytest.raises(AssertionError, match="did not end"):
        run_stage(hang)


def test_run_stage_waits_for_a_stage_that_sleeps_on_the_clock() -> None:
    clock = Clock()

    async def slow(exchange: Exchange, proceed: Proceed) -> Reply:
        await deferLater(clock, 3, lambda: None)
        return await proceed(exchange)

    assert run_stage(slow, clock=clock).text == "ok"
    assert clock.seconds() == 3
    with pytest.raises(AssertionError, match="did not finish synchronously"):
        run_stage(slow)


def test_manual_source_refuses_use_after_stop() -> None:
    source = ManualSource()
    with pytest.raises(AssertionError):
        source.send(ev.ping())
    source.stream().start(run_sink := _Sink())
    source.stop()
    with pytest.raises(AssertionError):
        source.end()
    assert run_sink.events == []


class _Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def write_events(self, events: list[Event]) -> None:
        self.events.extend(events)

    def end(self, error: object) -> None:
        pass
