# -*- test-case-name: tests.test_upstream_streaming -*-
"""
Relaying an upstream HTTP response body through a sans-IO translator, with backpressure.

:class:`UpstreamSource` is both the ``deliverBody`` protocol of the upstream response and the
:class:`~txrelay.streams.EventSource` of the client's reply: each upstream read is translated
and handed on in one batch, and the client's pause/resume/stop go straight to the upstream
transport. It also decides when the client's response may be committed (R-X8/R-X9): once
the upstream answered 2xx and its first content arrived, or when the commit deadline passes
first (so pings can start while a slow upstream thinks).

While no sink is attached yet (a stage still works between ``proceed()`` and handing the
reply on), committed events wait in memory and the upstream is paused, so a waiting stage
never makes the relay read a whole generation into memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError, upstream_event_error
from txrelay.protocol.events import Event
from txrelay.protocol.translator import StreamTranslator
from txrelay.streams import EventSink

log = RelayLogger()

_COMMIT_SLICE = 1024
#: The largest body kept when an upstream answers 2xx with JSON instead of an event stream.
_MAX_BARE_BODY = 1 << 20
_CONTENT = frozenset({"content_block_start", "content_block_delta", "message_delta"})


@attrs.define(eq=False)
class UpstreamSource(Protocol):
    """
    One upstream stream in flight.

    :ivar ready: fires when the client's response may be committed, or fails with the
        :class:`RelayError` to answer instead.
    """

    translator: StreamTranslator
    reactor: Any
    #: Longest silence between upstream reads, once the body started.
    idle_timeout: float
    #: Commit even without upstream content after this long (R-X9 is bounded by pings).
    commit_after: float
    #: After ``finish_reason``, how long to wait for the usage chunk and ``[DONE]`` (R-S16).
    finish_grace: float = 5.0
    #: The error for a 2xx body that is not an event stream: empty, or bare JSON (an
    #: error object some servers send with status 200). ``None``: the translator decides.
    bare_body: Callable[[bytes], RelayError] | None = None
    ready: Deferred[None] = attrs.Factory(Deferred)
    _sink: EventSink | None = None
    _pending: list[Event] = attrs.Factory(list)
    _upstream: Any = None  # the body transport (an IPushProducer), once the body flows
    _request: Deferred[Any] | None = None  # the upstream request, until it answers
    _ended: bool = False
    _paused: bool = False
    _idle_call: Any = None
    _last_read: float = 0.0
    #: ``finish_reason`` was seen: the idle limit is now the grace period (R-S16).
    _grace: bool = False
    _commit_call: Any = None
    _started_translating: bool = False
    _final_error: RelayError | None = None
    _drop_call: Any = None
    #: Paused by us because events wait for a sink that is not attached yet.
    _held: bool = False
    #: None until the first non-blank byte: then whether the body is an event stream.
    _is_stream: bool | None = None
    _bare: list[bytes] = attrs.Factory(list)
    _bare_size: int = 0
    # Protocol's own attributes (``makeConnection`` sets them) as slots too: one per held
    # stream, so no instance dict (issue 13).
    transport: Any = attrs.field(default=None, init=False)
    connected: int = attrs.field(default=0, init=False)

    # lifecycle driven by the backend

    def begin(self, request: Deferred[Any]) -> None:
        """Track the upstream request; call :meth:`response` when it answers 2xx."""
        if self._ended:  # the request already failed while it was being sent
            return
        self._request = request
        self._commit_call = self.reactor.callLater(self.commit_after, self._commit_deadline)

    def response(self, response: Any) -> None:
        """The upstream answered 2xx: start reading its body."""
        self._request = None
        if self._ended:
            response.deliverBody(_Discard())
            return
        self._ensure_started()
        response.deliverBody(self)

    def fail(self, error: RelayError) -> None:
        """The upstream request failed before or while streaming."""
        self._request = None
        self._error(error)

    # Protocol (the upstream body)

    def connectionMade(self) -> None:
        self._upstream = self.transport
        if self._paused or self._ended or self._held:
            if self._ended:
                self._upstream.stopProducing()
            else:
                self._upstream.pauseProducing()
        self._arm_idle()

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self._last_read = self.reactor.seconds()
        if self._idle_call is None:
            self._arm_idle()
        if self._is_stream is not True and self.bare_body is not None:
            data = self._sniff(data)
            if not data:
                return
        # Until the response is committed, translate in small slices: the first content
        # commits it and leaves at once instead of after the whole read is translated.
        while not self.ready.called and len(data) > _COMMIT_SLICE:
            head, data = data[:_COMMIT_SLICE], data[_COMMIT_SLICE:]
            self._translate(head)
            if self._ended:
                return
        self._translate(data)

    def _sniff(self, data: bytes) -> bytes:
        """Tell an event stream from a bare JSON body by its first non-blank byte."""
        if self._is_stream is None:
            head = data.lstrip()
            if not head:
                return b""
            self._is_stream = not head.startswith((b"{", b"["))
            if self._is_stream:
                # Not needed any more, and what it closes over (the backend's call, with the
                # upstream request body) would live as long as the stream.
                self.bare_body = None
                return data
        self._bare_size += len(data)
        if self._bare_size <= _MAX_BARE_BODY:
            self._bare.append(data)
        return b""

    def _translate(self, data: bytes) -> None:
        translator = self.translator
        events = translator.feed(data)
        if events:
            self._emit(events)
        if translator.done:
            if not self._ended:
                self._finish_normally()
        elif not self._grace and getattr(translator, "finish_seen", False):
            self._grace = True
            self._arm_idle()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancel_idle()
        if self._drop_call is not None and self._drop_call.active():
            self._drop_call.cancel()
        self._drop_call = None
        self._upstream = None
        if self._ended:
            return
        if self.bare_body is not None and self._is_stream is not True:
            # An empty 2xx body, or JSON where an event stream was asked for.
            self._error(self.bare_body(b"".join(self._bare)))
            return
        events = self.translator.finish()
        if events:
            self._emit(events)
        if not self._ended:
            self._finish_normally()

    # EventSource (the client side)

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        pending, self._pending = self._pending, []
        if pending:
            sink.write_events(pending)
        if self._ended:
            sink.end(self._final_error)
        elif self._held:
            self._held = False
            if not self._paused and self._upstream is not None:
                self._upstream.resumeProducing()
                self._arm_idle()

    def pause(self) -> None:
        self._paused = True
        self._cancel_idle()
        if self._upstream is not None:
            self._upstream.pauseProducing()

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._upstream is not None and not self._held:
            self._upstream.resumeProducing()
            self._arm_idle()

    def stop(self) -> None:
        """The client went away: drop the upstream connection (never reused half-read)."""
        self._ended = True
        self._sink = None
        self._cancel_timers()
        if self._request is not None:
            request, self._request = self._request, None
            request.cancel()
        if self._upstream is not None:
            self._upstream.stopProducing()
        if not self.ready.called:
            self.ready.errback(CancelledError())

    # internals

    def _ensure_started(self) -> None:
        if not self._started_translating:
            self._started_translating = True
            self._pending.extend(self.translator.start())

    def _emit(self, events: list[Event]) -> None:
        error: RelayError | None = None
        if events[-1].get("type") == "error":
            err = events.pop()["error"]
            # The translator's own error keeps its HTTP status (502 for upstream faults).
            error = getattr(self.translator, "error", None)
            if not isinstance(error, RelayError):
                error = upstream_event_error(err)
        if events:
            if self._sink is not None:
                self._sink.write_events(events)
            else:
                self._pending.extend(events)
                if not self.ready.called and any(e["type"] in _CONTENT for e in events):
                    self._mark_ready()
                # Committing may have started the client stream synchronously.
                if self.ready.called and self._sink is None:
                    self._hold()
        if error is not None:
            self._error(error)

    def _hold(self) -> None:
        """Committed events wait for a sink: stop reading the upstream until one starts."""
        if self._held or self._ended:
            return
        self._held = True
        self._cancel_idle()
        if self._upstream is not None and not self._paused:
            self._upstream.pauseProducing()

    def _mark_ready(self) -> None:
        if self._commit_call is not None and self._commit_call.active():
            self._commit_call.cancel()
        self._commit_call = None
        if not self.ready.called:
            self.ready.callback(None)

    def _commit_deadline(self) -> None:
        self._commit_call = None
        if not self.ready.called and not self._ended:
            self._ensure_started()
            self.ready.callback(None)

    def _error(self, error: RelayError) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_timers()
        if self._upstream is not None:
            self._upstream.stopProducing()
        if not self.ready.called:
            # Nothing was committed yet: the client gets a proper HTTP error (R-X8/R-X9).
            self._pending = []
            self.ready.errback(error)
            return
        self._final_error = error
        if self._sink is not None:
            self._sink.end(error)

    def _finish_normally(self) -> None:
        self._ended = True
        self._cancel_timers()
        if not self.ready.called:
            self._mark_ready()
        if self._sink is not None:
            self._sink.end(None)
        if self._upstream is not None:
            # The body should end right after [DONE]; drop a connection that lingers.
            self._drop_call = self.reactor.callLater(self.finish_grace, self._drop_upstream)

    def _drop_upstream(self) -> None:
        self._drop_call = None
        if self._upstream is not None:
            self._upstream.stopProducing()

    def _arm_idle(self) -> None:
        # One timer per stream that compares against the last read when it fires: re-arming
        # a timer on every chunk costs more than the chunk's translation.
        self._cancel_idle()
        if self._paused or self._ended or self._held:
            return
        self._last_read = self.reactor.seconds()
        limit = self.finish_grace if self._grace else self.idle_timeout
        self._idle_call = self.reactor.callLater(limit, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_call = None
        if self._ended or self._paused or self._held:
            return
        limit = self.finish_grace if self._grace else self.idle_timeout
        quiet = self.reactor.seconds() - self._last_read
        if quiet < limit - 1e-6:
            self._idle_call = self.reactor.callLater(limit - quiet, self._idle_check)
            return
        if self._grace:
            # R-S16: finish_reason came but the upstream keeps the connection open.
            events = self.translator.finish()
            if events:
                self._emit(events)
            if not self._ended:
                self._finish_normally()
            if self._upstream is not None:
                self._upstream.stopProducing()
            return
        self._error(RelayError("timeout_error",
                               f"upstream sent nothing for {self.idle_timeout:g} seconds"))

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _cancel_timers(self) -> None:
        self._cancel_idle()
        if self._drop_call is not None and self._drop_call.active():
            self._drop_call.cancel()
        self._drop_call = None
        if self._commit_call is not None and self._commit_call.active():
            self._commit_call.cancel()
        self._commit_call = None


class _Discard(Protocol):
    """Reads and drops a body nobody wants any more."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]
