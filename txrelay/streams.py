# -*- test-case-name: tests.test_streams -*-
"""
Event streams with flow control: how a reply's Anthropic events travel to the client.

A backend provides an :class:`EventSource`; the server starts it with an :class:`EventSink`
and passes the client socket's pause/resume/stop straight to it, so a slow client slows the
upstream read. Stages wrap a stream with sans-IO :class:`StreamFilter`s (``feed(event) ->
[events]``), which add no buffering of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import attrs

from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event


class EventSink(Protocol):
    """Where a stream delivers its events."""

    def write_events(self, events: list[Event]) -> None:
        """Deliver events in order. An ``error`` event is never delivered here."""

    def end(self, error: RelayError | None) -> None:
        """The stream is over: normally (``None``, after ``message_stop``) or with ``error``."""


class EventSource(Protocol):
    """Produces a reply's events; backends implement it."""

    def start(self, sink: EventSink) -> None:
        """Begin delivering events to ``sink``."""

    def pause(self) -> None:
        """The client cannot keep up: stop reading upstream until :meth:`resume`."""

    def resume(self) -> None:
        """The client caught up."""

    def stop(self) -> None:
        """The client went away: abandon the upstream request now."""


class StreamFilter(Protocol):
    """A sans-IO event transformer a stage puts on a reply's stream."""

    def feed(self, event: Event) -> list[Event]:
        """Events to send in place of ``event`` (often just ``[event]``)."""

    def finish(self) -> list[Event]:
        """Events held back, flushed when the stream ends normally."""


@attrs.define(eq=False)
class _FilteringSink:
    sink: EventSink
    filters: tuple[StreamFilter, ...]

    def write_events(self, events: list[Event]) -> None:
        for f in self.filters:
            out: list[Event] = []
            for e in events:
                out.extend(f.feed(e))
            events = out
        if events:
            self.sink.write_events(events)

    def end(self, error: RelayError | None) -> None:
        if error is None:
            # Flush each filter through the ones after it.
            for i, f in enumerate(self.filters):
                held = f.finish()
                for g in self.filters[i + 1:]:
                    held = [o for e in held for o in g.feed(e)]
                if held:
                    self.sink.write_events(held)
        self.sink.end(error)


@attrs.define(eq=False)
class EventStream:
    """A reply's events: a source plus the filters stages put on it, in order."""

    source: EventSource
    filters: tuple[StreamFilter, ...] = ()

    def through(self, stream_filter: StreamFilter) -> EventStream:
        """This stream with ``stream_filter`` applied after the existing filters."""
        return EventStream(self.source, (*self.filters, stream_filter))

    def start(self, sink: EventSink) -> None:
        """Deliver to ``sink``."""
        self.source.start(_FilteringSink(sink, self.filters) if self.filters else sink)

    def pause(self) -> None:
        """See :meth:`EventSource.pause`."""
        self.source.pause()

    def resume(self) -> None:
        """See :meth:`EventSource.resume`."""
        self.source.resume()

    def stop(self) -> None:
        """See :meth:`EventSource.stop`."""
        self.source.stop()


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
