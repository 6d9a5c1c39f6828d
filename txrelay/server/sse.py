# -*- test-case-name: tests.test_server -*-
"""
The SSE writer: delivers a reply's event stream to a streaming client with flow control.

It registers itself as the client request's streaming producer, so when the client's socket
buffer fills, Twisted pauses it and it pauses the event stream, which pauses the upstream
read. When nothing was written for ``ping_interval`` seconds it sends a ``ping`` (R-S17).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event, ping
from txrelay.protocol.sse import encode_event, encode_events
from txrelay.redact import redact_error
from txrelay.streams import EventStream

log = RelayLogger()

_PING = encode_event(ping())


@implementer(IPushProducer)
@attrs.define(eq=False)
class SSEWriter:
    """
    Writes one event stream to one client request.

    :ivar done: fires with ``None`` once the stream ended and the response finished, or the
        client went away.
    """

    request: Request
    stream: EventStream
    reactor: Any
    ping_interval: float
    on_event: Callable[[list[Event]], None] | None = None
    done: Deferred[None] = attrs.Factory(Deferred)
    error: RelayError | None = None
    #: The cumulative usage of the final ``message_delta``, once sent.
    usage: dict[str, Any] | None = None
    client_gone: bool = False
    _finished: bool = False
    _ping_call: Any = None
    _last_write: float = 0.0

    def start(self) -> None:
        """Register as the request's producer and start the stream."""
        self.request.notifyFinish().addErrback(self._client_lost)
        self.request.registerProducer(self, True)
        self._arm_ping()
        self.stream.start(self)

    # EventSink

    def write_events(self, events: list[Event]) -> None:
        if self._finished:
            return
        if self.on_event is not None:
            self.on_event(events)
        for e in events[-2:]:  # message_delta comes last but for message_stop
            if e["type"] == "message_delta":
                self.usage = e.get("usage")
        self.request.write(encode_events(events))
        self._last_write = self.reactor.seconds()

    def end(self, error: RelayError | None) -> None:
        if self._finished:
            return
        self._finished = True
        self.error = error
        self._cancel_ping()
        if self.client_gone:
            return
        if error is not None:
            # R-E4: after the commit an error is an event, then the connection closes.
            self.request.write(encode_event(redact_error(error).event()))
            self.request.channel.persistent = False
        self.request.unregisterProducer()
        self.request.finish()
        self._fire()

    # IPushProducer (the client's socket)

    def pauseProducing(self) -> None:
        self.stream.pause()

    def resumeProducing(self) -> None:
        self.stream.resume()

    def stopProducing(self) -> None:
        self._client_lost(None)

    # internals

    def _client_lost(self, _reason: object) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        self._cancel_ping()
        if not self._finished:
            self._finished = True
            self.stream.stop()
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
        if self._finished or self.client_gone:
            return
        now = self.reactor.seconds()
        due = self._last_write + self.ping_interval
        if now >= due - 0.001:
            self.request.write(_PING)
            self._last_write = now
            due = now + self.ping_interval
        self._ping_call = self.reactor.callLater(max(0.0, due - now), self._send_ping)
