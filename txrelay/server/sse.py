# -*- test-case-name: tests.server.test_sse_writer -*-
"""
The SSE writer: delivers a reply's event stream to a streaming client with flow control.

It registers itself as the client request's streaming producer, so when the client's socket
buffer fills, Twisted pauses it and it pauses the event stream, which pauses the upstream
read. When nothing was written for ``ping_interval`` seconds it sends a ``ping`` (R-S17).

Whatever way the stream ends (normally, with an error, the client leaving, the relay
failing or giving up), :meth:`SSEWriter.release` leaves nothing behind: the source is
stopped unless it ended by itself, the producer is unregistered and the ping timer cancelled.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.events import Event, ping
from txrelay.protocol.sse import encode_event, encode_events
from txrelay.redact import redact_error
from txrelay.server.bodywrite import direct_body, write_body
from txrelay.streams import EventStream

log = RelayLogger()

_PING = encode_event(ping())


@attrs.define(eq=False)
class StreamStats:
    """What a stream sent so far, for ``GET /admin/streams`` and the end-of-stream check."""

    bytes_written: int = 0
    #: The type of the last event sent, pings aside (``error`` after an error event).
    last_event: str | None = None
    #: ``reactor.seconds()`` when the first content delta was written (time to first token).
    first_content_at: float | None = None

    @property
    def terminal(self) -> bool:
        """Whether the stream's last event ends it (``message_stop`` or ``error``)."""
        return self.last_event in ("message_stop", "error")


def end_stream_with(request: Request, error: RelayError,
                    stats: StreamStats | None = None) -> None:
    """
    End a committed event-stream response with ``error`` as an ``event: error`` (R-E4),
    then finish it (the chunked terminator) and close the connection after the flush.
    """
    data = encode_event(redact_error(error).event())
    request.write(data)
    if stats is not None:
        stats.bytes_written += len(data)
        stats.last_event = "error"
    request.channel.persistent = False
    request.finish()


@implementer(IPushProducer)
@attrs.define(eq=False)
class SSEWriter:
    """
    Writes one event stream to one client request.

    :ivar done: fires with ``None`` once the stream ended and the response finished, or the
        client went away, or the writer failed.
    """

    request: Request
    stream: EventStream
    reactor: Any
    ping_interval: float
    done: Deferred[None] = attrs.Factory(Deferred)
    error: RelayError | None = None
    #: The cumulative usage of the final ``message_delta``, once sent.
    usage: dict[str, Any] | None = None
    client_gone: bool = False
    #: Bytes and the last event sent (shared with the resource's record of the request).
    stats: StreamStats = attrs.Factory(StreamStats)
    #: The response is over (ended, failed, or the client left): write nothing more.
    _finished: bool = False
    #: The source has not ended by itself: stopping it is ours to do (a reply's stream may
    #: hold a live upstream response before it is started).
    _source_live: bool = True
    _registered: bool = False
    _ping_call: IDelayedCall | None = None
    _last_write: float = 0.0
    _start_usage: dict[str, Any] = attrs.Factory(dict)
    #: The response head is out and :func:`write_body` may write the frames.
    _direct: bool = False

    def start(self) -> None:
        """Register as the request's producer and start the stream."""
        self.request.notifyFinish().addErrback(self._client_lost)
        self.request.registerProducer(self, True)
        self._registered = True
        self._arm_ping()
        self.stream.start(self)

    def _fail(self, error: RelayError) -> None:
        """
        Stop the stream now and end the response with ``error``: as an event when bytes
        were already sent, else left to the caller (nothing was committed yet).
        """
        self.release()
        if self._finished:
            return
        if not self.request.startedWriting:
            # Nothing committed: the resource answers with a JSON error instead.
            self._finished = True
            self.error = error
            self._fire()
            return
        self._finish(error)

    def release(self) -> None:
        """Give back what the writer holds: the source, the producer and the ping timer."""
        self._cancel_ping()
        if self._source_live:
            self._source_live = False
            try:
                self.stream.stop()
            except Exception:
                log.failure("stopping the event stream failed")
        self._unregister()

    # EventSink

    def write_events(self, events: list[Event]) -> None:
        if self._finished:
            return
        try:
            stats = self.stats
            last = events[-1]["type"] if events else None
            if last != "content_block_delta" or stats.first_content_at is None:
                # Not the common batch of deltas: note usage, first content, last event.
                self._note(events)
            else:
                stats.last_event = last
            data = encode_event(events[0]) if len(events) == 1 else encode_events(events)
            if self._direct:
                write_body(self.request, data)
            else:
                self.request.write(data)
                self._direct = direct_body(self.request)
            stats.bytes_written += len(data)
        except Exception:
            log.failure("writing the event stream failed")
            self._fail(api_error("the relay failed while writing the stream"))
            return
        self._last_write = self.reactor.seconds()

    def _note(self, events: list[Event]) -> None:
        """Usage, the time of the first content delta and the last event among ``events``."""
        stats = self.stats
        if events and events[0]["type"] == "message_start":
            # message_delta's usage is cumulative but may leave out the input counts
            self._start_usage = dict(events[0].get("message", {}).get("usage") or {})
        for e in events[-2:]:  # message_delta comes last but for message_stop
            if e["type"] == "message_delta":
                self.usage = {**self._start_usage, **(e.get("usage") or {})}
        if stats.first_content_at is None and any(
                e["type"] == "content_block_delta" for e in events):
            stats.first_content_at = self.reactor.seconds()
        for e in reversed(events):
            if e["type"] != "ping":
                stats.last_event = e["type"]
                break

    def end(self, error: RelayError | None) -> None:
        self._source_live = False
        if self._finished:
            return
        self._finish(error)

    # IPushProducer (the client's socket)

    def pauseProducing(self) -> None:
        self.stream.pause()

    def resumeProducing(self) -> None:
        self.stream.resume()

    def stopProducing(self) -> None:
        self._client_lost(None)

    # internals

    def _finish(self, error: RelayError | None) -> None:
        self._finished = True
        self.error = error
        self._cancel_ping()
        try:
            if not self.client_gone:
                self._unregister()
                if error is not None:
                    end_stream_with(self.request, error, self.stats)
                else:
                    self.request.finish()
        except Exception:
            log.failure("ending the event stream failed")
            self.release()
        finally:
            self._fire()

    def _unregister(self) -> None:
        # After a disconnect the request has no channel and unregisterProducer would raise.
        if self._registered:
            self._registered = False
            # (the flag from notifyFinish may not be set yet when the relay reacts first)
            if not self.client_gone and self.request.channel is not None:
                self.request.unregisterProducer()

    def _client_lost(self, _reason: object) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        self._finished = True
        self.release()
        self._fire()

    def _fire(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _arm_ping(self) -> None:
        # One timer that checks the last write time: cheaper than re-arming per write.
        self._last_write = self.reactor.seconds()
        self._ping_call = self.reactor.callLater(self.ping_interval, self._send_ping)

    def _cancel_ping(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def _send_ping(self) -> None:
        self._ping_call = None
        if self._finished:
            return
        now = self.reactor.seconds()
        due = self._last_write + self.ping_interval
        if now >= due - 0.001:
            self.request.write(_PING)
            self.stats.bytes_written += len(_PING)
            self._last_write = now
            due = now + self.ping_interval
        self._ping_call = self.reactor.callLater(max(0.0, due - now), self._send_ping)
