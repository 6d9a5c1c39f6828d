# -*- test-case-name: tests.test_demo -*-
"""The ``demo`` backend: the offline demo model, delivered like a real stream."""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface import implementer

from txrelay.interfaces import BackendContext, IBackend
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.demo import demo_events
from txrelay.protocol.events import Event
from txrelay.protocol.ids import message_id
from txrelay.protocol.tokens import estimate_input_tokens
from txrelay.streams import EventSink, EventStream


@attrs.frozen
class DemoOptions:
    """Options of a ``demo`` provider (its ``options`` table)."""

    #: Seconds between two events, to watch a stream arrive; 0 sends all at once.
    event_delay: float = 0.0


@attrs.define(eq=False)
class TimedSource:
    """Delivers prepared events, one every ``delay`` seconds (all at once when 0)."""

    events: list[Event]
    reactor: Any
    delay: float
    _sink: EventSink | None = None
    _next: int = 0
    _call: Any = None
    _paused: bool = False
    _stopped: bool = False

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._pump()

    def _pump(self) -> None:
        self._call = None
        if self._sink is None or self._paused or self._stopped:
            return
        if self._next >= len(self.events):
            return
        if self.delay <= 0:
            batch, self._next = self.events[self._next:], len(self.events)
        else:
            batch, self._next = [self.events[self._next]], self._next + 1
        self._sink.write_events(batch)
        if self._next >= len(self.events):
            self._sink.end(None)
        elif not self._paused and not self._stopped:
            self._call = self.reactor.callLater(self.delay, self._pump)

    def pause(self) -> None:
        self._paused = True
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._call is None:
                self._pump()

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


@implementer(IBackend)
@attrs.define(eq=False)
class DemoBackend:
    """Serves requests from the demo model."""

    reactor: Any
    options: DemoOptions = DemoOptions()

    async def messages(self, exchange: Exchange) -> Reply:
        req = exchange.require_request()
        assert exchange.route is not None
        limit = exchange.route.model.max_tokens if exchange.route.model else None
        if limit is not None and req.max_tokens is not None and req.max_tokens > limit:
            req = attrs.evolve(req, max_tokens=limit)
        events = demo_events(
            req,
            model=exchange.route.requested,
            message_id=message_id(),
            input_tokens=estimate_input_tokens(req),
        )
        source = TimedSource(events, self.reactor, self.options.event_delay)
        return Reply(stream=EventStream(source))

    async def count_tokens(self, exchange: Exchange) -> int:
        """A local estimate."""
        return estimate_input_tokens(exchange.require_request())

    def close(self) -> None:
        """Nothing to release."""
        return None


def build_demo_backend(options: DemoOptions, context: BackendContext) -> DemoBackend:
    """The ``demo`` backend."""
    return DemoBackend(context.reactor, options)
