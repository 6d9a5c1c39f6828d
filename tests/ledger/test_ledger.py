"""
The ledger's queue and flushing on a fake clock, with a sink whose writes the test answers:
batches by size and by interval, a full queue drops and counts, a failing database is
retried, then its batch dropped, and writing resumes; close writes what is queued.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from txrelay.health import Health
from txrelay.ledger.prices import Price, PriceTable
from txrelay.ledger.record import RequestRecord
from txrelay.ledger.writer import BATCH_TRIES, LOG_EVERY, PRUNE_EVERY, Ledger


@attrs.define
class FakeSink:
    """Records each batch; ``hold`` makes writes wait for the test, ``broken`` fail them."""

    kind: str = "fake"
    batches: list[list[str]] = attrs.Factory(list)
    records: list[RequestRecord] = attrs.Factory(list)
    waiting: list[Deferred[None]] = attrs.Factory(list)
    hold: bool = False
    broken: bool = False
    migrations: int = 0
    closed: bool = False

    def migrate(self) -> Deferred[Any]:
        if self.broken:
            return fail(OSError("database is down"))
        self.migrations += 1
        return succeed(None)

    def write(self, records: Sequence[RequestRecord]) -> Deferred[Any]:
        if self.broken:
            return fail(OSError("database is down"))
        ids = [r.request_id for r in records]
        self.records.extend(records)
        if self.hold:
            d: Deferred[None] = Deferred()
            d.addCallback(lambda _: self.batches.append(ids))
            self.waiting.append(d)
            return d
        self.batches.append(ids)
        return succeed(None)

    pruned: list[float] = attrs.Factory(list)

    def prune(self, before: float) -> Deferred[Any]:
        if self.broken:
            return fail(OSError("database is down"))
        self.pruned.append(before)
        return succeed(3)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def close(self) -> None:
        self.closed = True


@contextmanager
def capture_logs_of() -> Iterator[list[Any]]:
    events: list[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def rec(n: int, **kw: Any) -> RequestRecord:
    return RequestRecord(at=1e9 + n, request_id=f"r{n}", operation="messages", status=200,
                         duration=0.1, **kw)


def ledger(sink: FakeSink, **kw: Any) -> tuple[Ledger, Clock, list[int]]:
    clock = Clock()
    drops: list[int] = []
    led = Ledger(sink, clock, on_drop=drops.append, **{
        "batch_size": 3, "flush_interval": 1.0, "max_queue": 5, **kw})
    led.start()
    return led, clock, drops


def test_batches_by_interval_and_by_size() -> None:
    sink = FakeSink()
    led, clock, _ = ledger(sink)
    assert sink.migrations == 1
    led.record(rec(1))
    led.record(rec(2))
    assert sink.batches == []  # nothing is written in the request's call
    clock.advance(1.0)
    assert sink.batches == [["r1", "r2"]]
    for n in range(3, 6):
        led.record(rec(n))
    assert sink.batches == [["r1", "r2"]]
    clock.advance(0)  # a full batch goes on the next turn, before the interval
    assert sink.batches == [["r1", "r2"], ["r3", "r4", "r5"]]
    assert led.written == 5 and led.dropped == 0


def test_full_queue_drops_and_counts() -> None:
    sink = FakeSink(hold=True)
    led, clock, drops = ledger(sink)
    for n in range(1, 4):
        led.record(rec(n))
    clock.advance(0)  # r1..r3 are being written (held)
    for n in range(4, 12):
        led.record(rec(n))
    assert led.queued == 3 + 5 and drops == [1, 1, 1] and led.dropped == 3
    sink.release()
    clock.advance(0)
    sink.release()
    clock.advance(1.0)
    sink.release()
    assert [i for b in sink.batches for i in b] == [f"r{n}" for n in range(1, 9)]
    assert led.queued == 0 and led.written == 8


def test_drop_log_is_rate_limited(capture_logs: list[dict[str, Any]]) -> None:
    sink = FakeSink(hold=True)
    led, clock, _ = ledger(sink, max_queue=3)
    for n in range(1, 20):
        led.record(rec(n))
    lines = [e for e in capture_logs if "dropped" in e.get("log_format", "")]
    assert len(lines) == 1
    clock.advance(LOG_EVERY)  # r1..r3 are being written now: the queue takes 3 more
    for n in range(20, 24):
        led.record(rec(n))
    lines = [e for e in capture_logs if "dropped" in e.get("log_format", "")]
    # The drops in between, summed: 15 unlogged after the first, and r23.
    assert len(lines) == 2 and lines[1]["count"] == 16 and lines[1]["total"] == 17


def test_failing_database_retries_then_drops_then_resumes() -> None:
    sink = FakeSink()
    health = Health()
    led, clock, drops = ledger(sink, health=health)
    sink.broken = True
    led.record(rec(1))
    for _ in range(BATCH_TRIES - 1):
        clock.advance(1.0)
    assert drops == [] and led.queued == 1  # tried, kept for the next flush
    assert health.detail()["ledger"]["writing"] is False
    clock.advance(1.0)
    assert drops == [1] and led.queued == 0
    sink.broken = False
    led.record(rec(2))
    clock.advance(1.0)
    assert sink.batches == [["r2"]]
    assert health.detail()["ledger"] == {"kind": "fake", "writing": True, "error": None,
                                         "queued": 0, "dropped": 1}
    assert health.ready  # a failing ledger never makes the relay unready


def test_schema_is_retried_until_the_database_answers() -> None:
    sink = FakeSink(broken=True)
    led, clock, _ = ledger(sink)
    led.record(rec(1))
    clock.advance(1.0)
    assert sink.migrations == 0 and led.queued == 1
    sink.broken = False
    clock.advance(1.0)
    assert sink.migrations == 1 and sink.batches == [["r1"]]


def test_spend_from_the_price_table() -> None:
    sink = FakeSink()
    prices = PriceTable((Price("claude-*", input=3.0, output=15.0),))
    led, clock, _ = ledger(sink, prices=prices)
    led.record(rec(1, model="claude-x", input_tokens=1000, output_tokens=100))
    led.record(rec(2, model="other", input_tokens=1000))
    clock.advance(1.0)
    assert sink.records[0].spend == (1000 * 3.0 + 100 * 15.0) / 1e6
    assert sink.records[1].spend is None


def test_close_writes_the_queue_and_releases_the_database() -> None:
    sink = FakeSink()
    led, _clock, _ = ledger(sink, max_queue=10)
    for n in range(1, 8):
        led.record(rec(n))
    done = Deferred.fromCoroutine(led.close())
    assert done.called
    assert [i for b in sink.batches for i in b] == [f"r{n}" for n in range(1, 8)]
    assert sink.closed
    led.record(rec(9))  # after close: dropped, not queued
    assert led.dropped == 1


def test_close_is_bounded_by_its_timeout() -> None:
    sink = FakeSink(hold=True)
    led, clock, drops = ledger(sink, close_timeout=5.0)
    led.record(rec(1))
    led.record(rec(2))
    done = Deferred.fromCoroutine(led.close())
    assert not done.called
    clock.advance(5.0)
    assert done.called
    assert led.dropped == 2 and drops == [2]
    assert not sink.closed  # its thread still writes: the reactor's shutdown stops it
    with capture_logs_of() as events:
        sink.release()  # the late answer changes nothing, and is no error
    assert (led.written, led.dropped) == (0, 2) and events == []


@given(st.lists(st.one_of(
    st.tuples(st.just("record"), st.integers(1, 8)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 61.0])),
    st.tuples(st.just("broken"), st.booleans()),
    st.tuples(st.just("hold"), st.booleans()),
), max_size=40))
def test_every_record_is_written_dropped_or_queued(steps: list[tuple[str, Any]]) -> None:
    sink = FakeSink()
    led, clock, drops = ledger(sink)
    made = 0
    for op, arg in steps:
        if op == "record":
            for _ in range(arg):
                made += 1
                led.record(rec(made))
        elif op == "advance":
            clock.advance(arg)
        elif op == "broken":
            sink.broken = arg
        else:
            sink.hold = arg
            if not arg:
                sink.release()
        assert led.queued <= led.max_queue + led.batch_size
        assert sum(drops) == led.dropped
        written = [i for b in sink.batches for i in b]
        assert len(written) == led.written and len(set(written)) == len(written)
    sink.hold = sink.broken = False
    sink.release()
    Deferred.fromCoroutine(led.close())
    clock.advance(led.close_timeout)
    sink.release()
    assert led.written + led.dropped == made


def test_retention_prunes_once_an_hour() -> None:
    sink = FakeSink()
    wall = [2e9]
    _led, clock, _ = ledger(sink, retention=86400.0, wall=lambda: wall[0])
    assert sink.pruned == [2e9 - 86400]  # at start
    wall[0] += PRUNE_EVERY
    clock.advance(PRUNE_EVERY - 1)
    assert len(sink.pruned) == 1
    clock.advance(1.0)
    assert sink.pruned[1:] == [2e9 + PRUNE_EVERY - 86400]
    kept, _clock2, _ = ledger(FakeSink())
    assert kept.retention is None
