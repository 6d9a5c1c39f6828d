# -*- test-case-name: tests.ledger.test_ledger -*-
"""
:class:`Ledger`: takes one record per request on the reactor thread in constant time, and
writes them in batches (every ``flush_interval`` seconds, or as soon as ``batch_size`` are
waiting) through a :class:`~txrelay.ledger.sinks.Sink`.

A request never waits for the database and never fails because of it: past ``max_queue``
waiting records, new ones are dropped and counted (``txrelay_ledger_dropped_total``, and a
log line at most once a minute). A batch the database refused is tried again on the next
flushes, then dropped; writing resumes by itself once the database answers again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed

from txrelay.ledger.prices import PriceTable
from txrelay.ledger.record import RequestRecord
from txrelay.ledger.sinks import Sink
from txrelay.logs import RelayLogger

log = RelayLogger()

#: Tries of one batch before it is dropped.
BATCH_TRIES = 3
#: Seconds between two log lines about dropped records or a failing database.
LOG_EVERY = 60.0
#: Seconds between two deletions of the records past ``retention``.
PRUNE_EVERY = 3600.0


@attrs.define(eq=False)
class Ledger:
    """The in-memory queue in front of the ledger's database, and its flushing."""

    sink: Sink
    reactor: Any
    batch_size: int = 200
    flush_interval: float = 1.0
    max_queue: int = 10_000
    close_timeout: float = 5.0
    #: Spend of each record; replaced on reload.
    prices: PriceTable = attrs.Factory(PriceTable)
    #: Called with the number of records dropped (the Prometheus counter).
    on_drop: Callable[[int], None] | None = None
    #: The readiness reports (:class:`txrelay.health.Health`), told how the ledger fares.
    health: Any = None
    #: Seconds records are kept (older ones are deleted once an hour); None: forever.
    retention: float | None = None
    #: ``time.time``: the wall clock records are stamped with (``at``), for retention.
    wall: Callable[[], float] = time.time
    #: Records written, and dropped, since start.
    written: int = 0
    dropped: int = 0
    _queue: deque[RequestRecord] = attrs.Factory(deque)
    #: The batch being (re)tried, and how often it failed.
    _batch: list[RequestRecord] | None = None
    _batch_failures: int = 0
    _migrated: bool = False
    _flushing: Deferred[None] | None = None
    _timer: Any = None
    _soon: Any = None
    _closing: bool = False
    _failing: str | None = None
    _unlogged_drops: int = 0
    _last_log: float | None = None
    _last_prune: float | None = None

    def start(self) -> None:
        """Create or update the schema and start flushing."""
        self._report()
        self._flush()
        self._schedule()

    def record(self, r: RequestRecord) -> None:
        """Queue ``r`` (never raises, never waits); drop it when the queue is full."""
        if self._closing or len(self._queue) >= self.max_queue:
            self._drop(1, "the ledger is closing" if self._closing else
                       f"its queue is full ({self.max_queue} records)")
            return
        if r.spend is None and self.prices.prices:
            spend = self.prices.cost(r.usage(), r.model, r.model_served, r.model_requested)
            if spend is not None:
                r = attrs.evolve(r, spend=round(spend, 9))
        self._queue.append(r)
        if (len(self._queue) >= self.batch_size and self._flushing is None
                and self._soon is None):
            # Not in the request's own call stack: the flush starts on the next turn.
            self._soon = self.reactor.callLater(0, self._flush_soon)

    @property
    def queued(self) -> int:
        """Records waiting to be written (with a batch being tried)."""
        return len(self._queue) + len(self._batch or ())

    def _flush_soon(self) -> None:
        self._soon = None
        self._flush()

    def _schedule(self) -> None:
        if not self._closing:
            self._timer = self.reactor.callLater(self.flush_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._flush()
        self._schedule()

    def _flush(self) -> Deferred[None]:
        """Start writing what is queued unless a flush is under way; fires when it ends."""
        if self._flushing is None:
            running = Deferred.fromCoroutine(self._write_all())
            if running.called:  # the sink answered at once
                return succeed(None)
            self._flushing = running

            def over(_: object) -> None:
                self._flushing = None

            running.addBoth(over)
        done: Deferred[None] = Deferred()

        def chain(result: object) -> object:
            done.callback(None)
            return result

        self._flushing.addBoth(chain)
        return done

    async def _write_all(self) -> None:
        try:
            if not self._migrated:
                await self.sink.migrate()
                self._migrated = True
            while True:
                if self._batch is None:
                    if not self._queue:
                        break
                    count = min(self.batch_size, len(self._queue))
                    self._batch = [self._queue.popleft() for _ in range(count)]
                batch = self._batch
                await self.sink.write(batch)
                if self._batch is not batch:  # a close gave up on it (counted as dropped)
                    break
                self.written += len(batch)
                self._batch, self._batch_failures = None, 0
                if self._failing is not None:
                    log.info("usage ledger: the {kind} database takes records again",
                             kind=self.sink.kind)
                    self._failing = None
                    self._report()
                if len(self._queue) < self.batch_size and not self._closing:
                    break
            await self._prune()
        except Exception as e:
            self._failed(e)
        self._report()  # once a flush: the readiness detail stays current

    async def _prune(self) -> None:
        now = self.reactor.seconds()
        if self.retention is None or self._closing or (
                self._last_prune is not None and now - self._last_prune < PRUNE_EVERY):
            return
        self._last_prune = now
        gone = await self.sink.prune(self.wall() - self.retention)
        if gone:
            log.info("usage ledger: deleted {count} record(s) older than the retention",
                     count=gone)

    def _failed(self, error: Exception) -> None:
        why = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        if self._batch is not None:
            self._batch_failures += 1
            if self._batch_failures >= BATCH_TRIES or self._closing:
                count, self._batch, self._batch_failures = len(self._batch), None, 0
                self._drop(count, f"the {self.sink.kind} database failed: {why}")
        first, self._failing = self._failing is None, why
        if first:
            log.warn("usage ledger: the {kind} database fails ({why}); records wait in "
                     "memory (up to {max_queue}) and requests are served as usual",
                     kind=self.sink.kind, why=why, max_queue=self.max_queue)
            self._report()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._unlogged_drops += count
        if self.on_drop is not None:
            self.on_drop(count)
        now = self.reactor.seconds()
        if self._last_log is None or now - self._last_log >= LOG_EVERY:
            log.warn("usage ledger: dropped {count} record(s) because {why}; {total} dropped "
                     "since start", count=self._unlogged_drops, why=why, total=self.dropped)
            self._unlogged_drops, self._last_log = 0, now
            self._report()

    def _report(self) -> None:
        if self.health is not None:
            self.health.report("ledger", {
                "kind": self.sink.kind, "writing": self._failing is None,
                "error": self._failing, "queued": self.queued, "dropped": self.dropped,
            }, ready=True)  # a failing ledger never holds requests back

    async def close(self) -> None:
        """Stop taking records, write what is queued (at most ``close_timeout`` seconds),
        and release the database; what could not be written is counted as dropped."""
        if self._closing:
            return
        self._closing = True
        for call in (self._timer, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._soon = None
        deadline = self.reactor.seconds() + self.close_timeout
        while self.queued and self.reactor.seconds() < deadline:
            before = self.dropped + self.written
            if not await self._within(self._flush(), deadline - self.reactor.seconds()):
                break
            if self._failing is not None or self.dropped + self.written == before:
                break
        if self.queued:
            self._last_log = None  # this last count is always logged
            self._drop(self.queued, "the relay stopped before they could be written")
            self._queue.clear()
            self._batch = None
        if self._flushing is None:
            self.sink.close()  # with a write still in its thread, the reactor's shutdown does
        log.info("usage ledger closed: {written} record(s) written, {dropped} dropped",
                 written=self.written, dropped=self.dropped)

    async def _within(self, d: Deferred[None], seconds: float) -> bool:
        waited: Deferred[bool] = Deferred()

        def late() -> None:
            if not waited.called:
                waited.callback(False)

        timer = self.reactor.callLater(max(0.0, seconds), late)

        def fired(_: object) -> None:
            if not waited.called:
                timer.cancel()
                waited.callback(True)

        d.addBoth(fired)
        return await waited


def open_ledger(cfg: Any, reactor: Any, metrics: Any = None, health: Any = None) -> Ledger | None:
    """The ledger ``cfg.ledger`` describes (not started), or None when it is off."""
    from txrelay.ledger.sinks import postgres_sink, sqlite_path, sqlite_sink

    led = cfg.ledger
    if led is None or led.kind == "off":
        return None
    sink: Sink
    if led.kind == "postgres":
        sink = postgres_sink(led.dsn.value, reactor)
    else:
        sink = sqlite_sink(sqlite_path(led.path), reactor)
    return Ledger(sink, reactor, led.batch_size, led.flush_interval, led.max_queue,
                  led.close_timeout, PriceTable(cfg.prices),
                  None if metrics is None else metrics.ledger_dropped.inc, health,
                  retention=led.retention_days * 86400 if led.retention_days else None)
