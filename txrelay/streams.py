# -*- test-case-name: tests.test_streams -*-
"""
Event streams with flow control: how a reply's Anthropic events travel to the client.

A backend provides an :class:`EventSource`; the server starts it with an :class:`EventSink`
and passes the client socket's pause/resume/stop straight to it, so a slow client slows the
upstream read. Stages wrap a stream with sans-IO :class:`StreamFilter`s (``feed(event) ->
[events]``), which add no buffering of their own.

A filter belongs to the stage that added it (:class:`StageContext`): when it raises, the
failure is logged with that stage's name and a traceback, the source is stopped and the
client's stream ends with an ``api_error`` that names the stage. An :class:`EventStream` is
itself an :class:`EventSource`, so a stream with its filters can be the source of another
(that is how :meth:`EventStream.on_end` and :func:`txrelay.toolkit.splice` wrap streams).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.events import Event
from txrelay.protocol.sse import plain

log = RelayLogger()


class EventSink(Protocol):
    """Where a stream delivers its events."""

    def write_events(self, events: list[Event]) -> None:
        """Deliver events in order. An ``error`` event is never delivered here."""

    def end(self, error: RelayError | None) -> None:
        """The stream is over: normally (``None``, after ``message_stop``) or with ``error``."""


class EventSource(Protocol):
    """
    Produces a reply's events; backends implement it.

    ``pause`` may come before ``start`` (the stream is then started paused); after ``stop``
    the source delivers nothing more, not even ``end``.
    """

    def start(self, sink: EventSink) -> None:
        """Begin delivering events to ``sink``."""

    def pause(self) -> None:
        """The client cannot keep up: stop reading upstream until :meth:`resume`."""

    def resume(self) -> None:
        """The client caught up."""

    def stop(self) -> None:
        """The client went away: abandon the upstream request now."""


class StreamFilter(Protocol):
    """
    A sans-IO event transformer a stage puts on a reply's stream.

    Raising :class:`RelayError` from ``feed`` or ``finish`` stops the source and ends the
    client's stream with that error; raising anything else is logged as the stage's bug
    and ends it with an ``api_error`` naming the stage.
    """

    def feed(self, event: Event) -> list[Event]:
        """Events to send in place of ``event`` (often just ``[event]``)."""

    def finish(self) -> list[Event]:
        """
        Events held back, flushed when the stream ends normally: after the source's last
        event (``message_stop``), so a filter holding text back releases it by the
        block's ``content_block_stop``.
        """


@attrs.frozen
class StageContext:
    """
    Which stage is running, for which request: what a failing filter is blamed on.

    :func:`txrelay.pipeline.compose` sets it while each stage runs; a filter added with
    :meth:`EventStream.through` during that time belongs to that stage.
    """

    name: str
    request_id: str | None = None

    def describe_failure(self, what: str) -> str:
        """A plain-words message: ``stage 'x' failed while <what> (request req_…)``."""
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"stage {self.name!r} failed while {what}{where}"


#: The stage running now (set by :func:`txrelay.pipeline.compose`).
current_stage: contextvars.ContextVar[StageContext | None] = contextvars.ContextVar(
    "txrelay_current_stage", default=None
)


def _unnamed() -> StageContext:
    return StageContext("(unnamed)")


@attrs.define(eq=False)
class _FilteringSink:
    sink: EventSink
    filters: tuple[StreamFilter, ...]
    owners: tuple[StageContext | None, ...]
    source: EventSource
    _failed: bool = False

    def write_events(self, events: list[Event]) -> None:
        if self._failed:
            return
        # Event by event through the whole chain, so that what came before a failing event
        # still reaches the client.
        out: list[Event] = []
        i = 0
        try:
            for event in events:
                batch = [plain(event)]  # a filter's output is encoded again, never raw
                for i, f in enumerate(self.filters):  # noqa: B007 - i names the culprit
                    batch = [o for e in batch for o in f.feed(e)]
                out.extend(batch)
        except RelayError as e:
            self._flush(out)
            self._abort(e)
            return
        except Exception:
            failure = Failure()
            self._flush(out)
            self._fail(i, "filtering the stream", failure)
            return
        self._flush(out)

    def _flush(self, events: list[Event]) -> None:
        if events:
            self.sink.write_events(events)

    def end(self, error: RelayError | None) -> None:
        if self._failed:
            return
        if error is None:
            # Flush each filter through the ones after it.
            for i, f in enumerate(self.filters):
                culprit = i
                try:
                    held = f.finish()
                    for j, g in enumerate(self.filters[i + 1:], i + 1):
                        culprit = j
                        held = [o for e in held for o in g.feed(e)]
                except RelayError as e:
                    self._abort(e)
                    return
                except Exception:
                    self._fail(culprit, "finishing the stream", Failure())
                    return
                if held:
                    self.sink.write_events(held)
        self.sink.end(error)

    def _fail(self, index: int, what: str, failure: Failure) -> None:
        self._failed = True
        owner = self.owners[index] if index < len(self.owners) else None
        owner = owner or _unnamed()
        message = owner.describe_failure(what)
        log.failure("{message}", failure, LogLevel.error, message=message, stage=owner.name,
                    request_id=owner.request_id)
        error = api_error(message)
        error.__cause__ = failure.value
        self._abort(error)

    def _abort(self, error: RelayError) -> None:
        # A filter that raises RelayError ends the stream with it on purpose (a guard that
        # blocks a reply, a limit reached mid-stream); anything else is a stage bug.
        self._failed = True
        self.source.stop()
        self.sink.end(error)


Outcome = Literal["complete", "error", "stopped"]


@attrs.frozen
class StreamEnd:
    """
    How a stream ended, as an end-of-stream hook sees it (accounting, limits, a ledger).

    :ivar outcome: ``"complete"`` (``message_stop`` was delivered), ``"error"`` (the stream
        ended with :attr:`error`), or ``"stopped"`` (the consumer stopped it: the client went
        away, or a later stage's filter failed and abandoned it).
    :ivar usage: the final usage: the ``message_start`` usage updated with the last
        ``message_delta``'s; for a stream spliced from several calls, summed over them
        (including calls before a failure).
    :ivar stop_reason: the final ``stop_reason``, when a ``message_delta`` came.
    :ivar error: the error the stream ended with (``"error"`` only).
    """

    outcome: Outcome
    usage: Mapping[str, Any]
    stop_reason: str | None = None
    error: RelayError | None = None


EndHook = Callable[[StreamEnd], object]


def call_hook(hook: EndHook, end: StreamEnd) -> None:
    """Run an end-of-stream hook; log (never raise) what it raises, now or asynchronously."""
    try:
        result = hook(end)
    except Exception:
        log.failure("end-of-stream hook failed", level=LogLevel.error)
        return
    if inspect.iscoroutine(result):
        result = Deferred.fromCoroutine(result)
    if isinstance(result, Deferred):
        result.addErrback(lambda f: log.failure("end-of-stream hook failed", f, LogLevel.error))


@attrs.define(eq=False)
class UsageTracker:
    """Follows ``message_start``/``message_delta`` usage in a stream's events."""

    usage: dict[str, Any] = attrs.Factory(dict)
    stop_reason: str | None = None
    completed: bool = False

    def feed(self, events: list[Event]) -> None:
        """Note the usage-bearing events among ``events``."""
        for e in events:
            kind = e["type"]
            if kind == "message_start":
                self.usage = dict(e["message"].get("usage") or {})
            elif kind == "message_delta":
                self.usage.update(e.get("usage") or {})
                self.stop_reason = (e.get("delta") or {}).get("stop_reason")
            elif kind == "message_stop":
                self.completed = True


@attrs.define(eq=False)
class _Watched:
    """The source of ``stream.on_end(hook)``: passes everything on, calls the hook once."""

    inner: EventStream
    hook: EndHook
    _sink: EventSink | None = None
    _tracker: UsageTracker = attrs.Factory(UsageTracker)
    _done: bool = False

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self.inner.start(self)

    def write_events(self, events: list[Event]) -> None:
        if self._done or self._sink is None:
            return
        self._tracker.feed(events)
        self._sink.write_events(events)

    def end(self, error: RelayError | None) -> None:
        if self._done or self._sink is None:
            return
        try:
            self._sink.end(error)
        finally:
            self._fire("error" if error is not None else "complete", error)

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    def stop(self) -> None:
        if self._done:
            return
        try:
            self.inner.stop()
        finally:
            self._fire("stopped", None)

    def usage_so_far(self) -> dict[str, Any]:
        """What this stream used so far (see :attr:`StreamEnd.usage`)."""
        inner = self.inner.usage_so_far()
        return inner if inner is not None else dict(self._tracker.usage)

    def _fire(self, outcome: Outcome, error: RelayError | None) -> None:
        self._done = True
        call_hook(self.hook, StreamEnd(outcome, self.usage_so_far(), self._tracker.stop_reason,
                                       error))


@attrs.define(eq=False)
class EventStream:
    """
    A reply's events: a source plus the filters stages put on it, in order.

    An ``EventStream`` is also an :class:`EventSource`, so it can be the source of another.
    """

    source: EventSource
    filters: tuple[StreamFilter, ...] = ()
    #: The stage each filter belongs to (``None``: unknown), parallel to :attr:`filters`.
    owners: tuple[StageContext | None, ...] = ()

    def through(self, stream_filter: StreamFilter, *, name: str | None = None) -> EventStream:
        """
        This stream with ``stream_filter`` applied after the existing filters.

        The filter belongs to the stage running now (:data:`current_stage`), or to ``name``.
        """
        owner = current_stage.get()
        if name is not None:
            owner = StageContext(name, owner.request_id if owner is not None else None)
        owners = self.owners + (None,) * (len(self.filters) - len(self.owners))
        return EventStream(self.source, (*self.filters, stream_filter), (*owners, owner))

    def on_end(self, hook: EndHook) -> EventStream:
        """
        This stream, calling ``hook`` with a :class:`StreamEnd` exactly once when it ends:
        normally, with an error, or stopped. The hook may be ``async``; what it raises is
        logged. A stream that is never started must still be stopped for the hook to run.
        """
        return EventStream(_Watched(self, hook))

    def start(self, sink: EventSink) -> None:
        """Deliver to ``sink``."""
        if self.filters:
            sink = _FilteringSink(sink, self.filters, self.owners, self.source)
        self.source.start(sink)

    def pause(self) -> None:
        """See :meth:`EventSource.pause`."""
        self.source.pause()

    def resume(self) -> None:
        """See :meth:`EventSource.resume`."""
        self.source.resume()

    def stop(self) -> None:
        """See :meth:`EventSource.stop`."""
        self.source.stop()

    def usage_so_far(self) -> dict[str, Any] | None:
        """
        What the source reports it used so far, if it keeps count (spliced and watched
        streams do; ``None`` otherwise).
        """
        report = getattr(self.source, "usage_so_far", None)
        if report is None:
            return None
        usage: dict[str, Any] | None = report()
        return usage


@attrs.define(eq=False)
class ListSource:
    """
    An :class:`EventSource` over events known in advance, delivered in one batch.

    For stages that answer by themselves and for tests; honours pause (delivery waits).
    """

    events: list[Event]
    error: RelayError | None = None
    _sink: EventSink | None = None
    _paused: bool = False
    _stopped: bool = False
    _done: bool = False

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._deliver()

    def _deliver(self) -> None:
        if self._sink is None or self._paused or self._stopped or self._done:
            return
        self._done = True
        if self.events:
            self._sink.write_events(self.events)
        if not self._stopped:
            self._sink.end(self.error)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._deliver()

    def stop(self) -> None:
        self._stopped = True


@attrs.define(eq=False)
class CollectingSink:
    """An :class:`EventSink` that keeps what it is given (non-streaming replies, tests)."""

    events: list[Event] = attrs.Factory(list)
    ended: bool = False
    error: RelayError | None = None

    def write_events(self, events: list[Event]) -> None:
        self.events.extend(events)

    def end(self, error: RelayError | None) -> None:
        self.ended = True
        self.error = error


def stream_of(events: Iterable[Event], error: RelayError | None = None) -> EventStream:
    """An :class:`EventStream` over a fixed list of events."""
    return EventStream(ListSource(list(events), error))
