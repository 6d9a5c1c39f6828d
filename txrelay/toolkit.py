# -*- test-case-name: tests.test_toolkit -*-
"""
The stream toolkit for stages: everything a stage needs beyond a filter, in one module.

- :meth:`Reply.with_filter` / :meth:`EventStream.through`: put a sans-IO filter on a reply.
- :func:`collect`: await a whole stream (cancelling the wait stops the stream).
- :func:`splice`: one client stream made of several upstream calls, the stage deciding
  after each call whether to make another (tool interception).
- :meth:`Reply.on_end` / :meth:`EventStream.on_end`: a hook that sees the final usage and
  outcome exactly once, however the stream ends (accounting, limits).

The stream types themselves live in :mod:`txrelay.streams` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.events import Event
from txrelay.streams import (
    EndHook,
    EventSink,
    EventSource,
    EventStream,
    ListSource,
    StageContext,
    StreamEnd,
    StreamFilter,
    UsageTracker,
    current_stage,
    stream_of,
)

__all__ = [
    "CallOutcome",
    "Collected",
    "EndHook",
    "EventSink",
    "EventSource",
    "EventStream",
    "Exchange",
    "ListSource",
    "NextCall",
    "Proceed",
    "Reply",
    "StreamEnd",
    "StreamFilter",
    "add_usage",
    "blocks_stream",
    "call_again",
    "collect",
    "splice",
    "stream_of",
]

log = RelayLogger()

_BLOCK_EVENTS = frozenset({"content_block_start", "content_block_delta", "content_block_stop"})
#: Folds a call that sends bare content blocks (see :func:`blocks_stream`).
_NO_START = ev.message_start("", "", {})


def add_usage(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """
    Two usage objects added: numbers summed, nested objects (``server_tool_use``) added
    key by key, anything else (``service_tier``) taken from ``b``.
    """
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if value is None:
            out.setdefault(key, None)
        elif (isinstance(value, int | float) and isinstance(mine, int | float)
              and not isinstance(value, bool)):
            out[key] = mine + value
        elif isinstance(value, Mapping) and isinstance(mine, Mapping):
            out[key] = add_usage(mine, value)
        else:
            out[key] = value
    return out


# collect


@attrs.frozen
class Collected:
    """
    A whole stream.

    :ivar message: the events folded into one Anthropic message.
    :ivar events: the events in order (empty when collected with ``keep_events=False``).
    """

    message: dict[str, Any]
    events: list[Event]


@attrs.define(eq=False)
class _CollectingSink:
    stream: EventStream
    keep_events: bool
    done: Deferred[None]
    accumulator: MessageAccumulator = attrs.Factory(MessageAccumulator)
    events: list[Event] = attrs.Factory(list)
    error: RelayError | None = None

    def write_events(self, events: list[Event]) -> None:
        if self.done.called:
            return
        if self.keep_events:
            self.events.extend(events)
        try:
            for e in events:
                self.accumulator.feed(e)
        except RelayError as e:
            self.stream.stop()
            self.end(e)

    def end(self, error: RelayError | None) -> None:
        if not self.done.called:
            self.error = error
            self.done.callback(None)


async def collect(stream: EventStream, *, keep_events: bool = True) -> Collected:
    """
    Start ``stream`` and wait for its end; raise the :class:`RelayError` it ended with.

    Cancelling the wait (``Deferred.cancel()`` on the coroutine's Deferred, as a client that
    goes away does) stops the stream, and so its upstream request.
    """
    done: Deferred[None] = Deferred(lambda _: stream.stop())
    sink = _CollectingSink(stream, keep_events, done)
    stream.start(sink)
    await done
    if sink.error is not None:
        raise sink.error
    return Collected(sink.accumulator.result(), sink.events)


# splice


@attrs.frozen
class CallOutcome:
    """
    What one upstream call of a spliced stream delivered, for the stage to decide on.

    :ivar number: 1 for the first call, 2 for the next, …
    :ivar message: the call's events folded into one message, with its own block indexes
        (``content``, ``stop_reason``, its ``usage``), after the call stream's own filters.
    :ivar usage: this call's usage.
    :ivar total_usage: usage summed over the calls so far, this one included.
    """

    number: int
    message: Mapping[str, Any]
    usage: Mapping[str, Any]
    total_usage: Mapping[str, Any]

    @property
    def stop_reason(self) -> str | None:
        """The call's ``stop_reason``."""
        reason = self.message.get("stop_reason")
        return reason if isinstance(reason, str) else None

    def blocks(self, type_name: str | None = None) -> list[dict[str, Any]]:
        """The call's content blocks (of ``type_name`` only, if given)."""
        content = self.message.get("content") or []
        return [b for b in content if type_name is None or b.get("type") == type_name]


#: Decides after each call: the next call's stream, or ``None`` to end the client's stream.
NextCall = Callable[[CallOutcome], Awaitable[EventStream | None]]


def splice(first: EventStream, next_call: NextCall, *, reactor: IReactorTime,
           ping_interval: float = 10.0) -> EventStream:
    """
    One client stream made of ``first`` and the calls ``next_call`` returns after each.

    The client sees one ``message_start`` (the first call's), every call's content blocks
    numbered on without gaps, and one final ``message_delta`` with the last call's
    ``stop_reason`` and usage summed over all calls, then ``message_stop``. While
    ``next_call`` works it gets ``ping`` events every ``ping_interval`` seconds of
    ``reactor`` time. Pause, resume and stop reach whichever call is live; stop also cancels
    a ``next_call`` in progress. An error from any call, or raised by ``next_call``, ends
    the client's stream with an ``error`` event; ``next_call`` is called with the
    stage context it was spliced in, so its failures and filters are blamed on that stage.
    A call may also be a stream of bare content blocks (:func:`blocks_stream`).
    """
    return EventStream(Continuation(first, next_call, reactor, ping_interval,
                                    current_stage.get()))


@attrs.define(eq=False)
class _CallSink:
    owner: Continuation

    def write_events(self, events: list[Event]) -> None:
        self.owner._call_events(self, events)

    def end(self, error: RelayError | None) -> None:
        self.owner._call_ended(self, error)


@attrs.define(eq=False)
class Continuation:
    """The :class:`EventSource` behind :func:`splice`."""

    first: EventStream
    next_call: NextCall
    reactor: IReactorTime
    ping_interval: float = 10.0
    stage: StageContext | None = None
    _sink: EventSink | None = None
    _live: EventStream | None = None
    _call_sink: _CallSink | None = None
    _waiting: Deferred[EventStream | None] | None = None
    _ping_call: IDelayedCall | None = None
    _paused: bool = False
    _finished: bool = False
    _number: int = 0
    _offset: int = 0
    _call_blocks: int = 0
    _sent_start: bool = False
    _accumulator: MessageAccumulator = attrs.Factory(MessageAccumulator)
    _tracker: UsageTracker = attrs.Factory(UsageTracker)
    _totals: dict[str, Any] = attrs.Factory(dict)
    _last_delta: dict[str, Any] | None = None

    # EventSource

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._begin(self.first)

    def pause(self) -> None:
        self._paused = True
        if self._live is not None:
            self._live.pause()

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._live is not None:
            self._live.resume()

    def stop(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_ping()
        live, self._live, self._call_sink = self._live, None, None
        if self._number == 0:
            live = self.first  # stopped before it started: release the first call anyway
        elif live is not None:
            self._totals = add_usage(self._totals, self._tracker.usage)
        if live is not None:
            live.stop()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    def usage_so_far(self) -> dict[str, Any]:
        """Usage summed over the finished calls and the live one."""
        if self._live is not None:
            return add_usage(self._totals, self._tracker.usage)
        return dict(self._totals)

    # one call

    def _begin(self, stream: EventStream) -> None:
        self._number += 1
        self._accumulator = MessageAccumulator()
        self._tracker = UsageTracker()
        self._call_blocks = 0
        self._live = stream
        self._call_sink = sink = _CallSink(self)
        if self._paused:
            stream.pause()
        stream.start(sink)

    def _call_events(self, sink: _CallSink, events: list[Event]) -> None:
        if sink is not self._call_sink or self._sink is None:
            return
        self._tracker.feed(events)
        out: list[Event] = []
        try:
            for e in events:
                kind = e["type"]
                if self._accumulator.message is None and kind != "message_start":
                    self._accumulator.feed(_NO_START)
                if kind == "message_start":
                    self._accumulator.feed(e)
                    if not self._sent_start:
                        self._sent_start = True
                        out.append(e)
                elif kind in _BLOCK_EVENTS:
                    self._accumulator.feed(e)
                    index = e["index"]
                    self._call_blocks = max(self._call_blocks, index + 1)
                    out.append(dict(e, index=index + self._offset) if self._offset else e)
                elif kind == "message_delta":
                    self._accumulator.feed(e)
                    self._last_delta = dict(e.get("delta") or {})
                elif kind != "message_stop":
                    out.append(e)
        except RelayError as error:
            self._fail(error)
            return
        if out:
            self._sink.write_events(out)

    def _call_ended(self, sink: _CallSink, error: RelayError | None) -> None:
        if sink is not self._call_sink or self._finished:
            return
        self._totals = add_usage(self._totals, self._tracker.usage)
        self._live, self._call_sink = None, None
        if error is not None:
            self._end(error)
            return
        outcome = CallOutcome(self._number, self._accumulator.message or {},
                              dict(self._tracker.usage), dict(self._totals))
        self._offset += self._call_blocks
        self._arm_ping()
        d = Deferred.fromCoroutine(self._decide(outcome))
        if not d.called:
            self._waiting = d
        d.addCallbacks(self._decided, self._decide_failed)

    async def _decide(self, outcome: CallOutcome) -> EventStream | None:
        current_stage.set(self.stage)  # this coroutine runs in a context of its own
        return await self.next_call(outcome)

    def _decided(self, stream: EventStream | None) -> None:
        self._waiting = None
        self._cancel_ping()
        if self._finished:
            if stream is not None:
                stream.stop()
            return
        if stream is None:
            self._complete()
        elif not isinstance(stream, EventStream):
            context = self.stage or StageContext("(unnamed)")
            message = context.describe_failure("preparing its next call")
            log.error("{message}: next_call returned a {kind}, not an EventStream or None",
                      message=message, kind=type(stream).__name__)
            self._end(api_error(message))
        else:
            self._begin(stream)

    def _decide_failed(self, failure: Failure) -> None:
        self._waiting = None
        self._cancel_ping()
        if self._finished:
            if not failure.check(CancelledError):
                log.failure("a spliced stream's next call failed after it was stopped",
                            failure, LogLevel.error)
            return
        if isinstance(failure.value, RelayError):
            self._end(failure.value)
            return
        context = self.stage or StageContext("(unnamed)")
        message = context.describe_failure("preparing its next call")
        log.failure("{message}", failure, LogLevel.error, message=message,
                    stage=context.name, request_id=context.request_id)
        self._end(api_error(message))

    def _complete(self) -> None:
        assert self._sink is not None
        delta = self._last_delta or {"stop_reason": "end_turn", "stop_sequence": None}
        usage = dict(self._totals)
        usage.setdefault("output_tokens", 0)
        self._sink.write_events([
            ev.message_delta(delta.get("stop_reason"), delta.get("stop_sequence"), usage),
            ev.message_stop(),
        ])
        if not self._finished:
            self._end(None)

    def _fail(self, error: RelayError) -> None:
        live, self._live, self._call_sink = self._live, None, None
        if live is not None:
            live.stop()
        self._totals = add_usage(self._totals, self._tracker.usage)
        self._end(error)

    def _end(self, error: RelayError | None) -> None:
        self._finished = True
        self._cancel_ping()
        if self._sink is not None:
            self._sink.end(error)

    # pings while the stage works

    def _arm_ping(self) -> None:
        self._cancel_ping()
        self._ping_call = self.reactor.callLater(self.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_call = None
        if self._finished or self._live is not None or self._sink is None:
            return
        self._sink.write_events([ev.ping()])
        if not self._finished and self._live is None:
            self._arm_ping()

    def _cancel_ping(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None


def blocks_stream(blocks: Iterable[Mapping[str, Any]]) -> EventStream:
    """
    A stream of complete content blocks only (no ``message_start``, no ``message_delta``),
    each a ``content_block_start`` carrying the whole block and a ``content_block_stop``:
    what a ``next_call`` returns to splice in blocks the stage made itself (a
    ``web_search_tool_result``, a notice). It adds no usage and keeps the previous call's
    ``stop_reason``; ``next_call`` is called again after it.
    """
    events: list[Event] = []
    for i, block in enumerate(blocks):
        events += [ev.block_start(i, dict(block)), ev.block_stop(i)]
    return stream_of(events)


async def call_again(proceed: Proceed, exchange: Exchange) -> EventStream:
    """
    ``proceed(exchange)``'s stream, for a ``next_call``: a reply without a stream (which a
    stage never gets from a ``messages`` call) is an error naming the situation.
    """
    reply = await proceed(exchange)
    if reply.stream is None:
        raise api_error("the pipeline answered a continued call without a stream")
    return reply.stream
