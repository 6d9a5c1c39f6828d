# -*- test-case-name: tests.server -*-
"""The twisted.web site: the relay's request and connection classes, and connection tracking."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from txrelay.server.channel import FrontDoorChannel
from txrelay.server.frontdoor import BufferBudget, FrontDoorPolicy


class RelayRequest(Request):
    """
    A request whose body is kept in memory, within the limits its channel enforces.

    twisted.web has no body limit of its own and spills bodies over 100 kB to temporary
    files; the relay's :class:`~txrelay.server.channel.FrontDoorChannel` answers 413 as soon
    as a body passes ``max_request_bytes`` and stops reading, so what is kept stays small.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The relay never reads form submissions: skip twisted.web's per-POST content-type
        # parse (an email.message round trip, about 30 µs a request).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        accept = getattr(self.channel, "accept_body", None)
        if accept is not None and not accept(len(data)):
            return
        assert self.content is not None
        self.content.write(data)


class RelayChannel(FrontDoorChannel):
    """An HTTP/1.1 connection the site keeps track of, so a drain can close it gracefully."""

    site: RelaySite

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)
        # Not ``persistent = False`` here during a drain: twisted.web would drop the first
        # request as data sent after the last one. Each request is answered with
        # ``Connection: close`` instead (RelayResource.render).

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.site.channel_closed(self)


class RelaySite(Site):
    """
    A :class:`Site` with the relay's request class, without the per-line access log, and
    with the live connections tracked for draining.
    """

    requestFactory = RelayRequest
    protocol = RelayChannel  # type: ignore[assignment]  # HTTP/1.1 only (no h2 negotiation)
    draining = False

    def __init__(self, resource: Any, *, max_request_bytes: int, timeout: float,
                 reactor: Any, front_door: FrontDoorPolicy | None = None) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)  # type: ignore[no-untyped-call]
        self.max_request_bytes = max_request_bytes
        #: The limits and deadlines every connection enforces before the resource runs.
        self.front_door = front_door or FrontDoorPolicy(max_request_bytes=max_request_bytes)
        #: Request bodies buffered at once, across all connections.
        self.buffer_budget = BufferBudget(self.front_door.max_buffered_bytes)
        self.channels: set[RelayChannel] = set()
        self._all_closed: list[Deferred[None]] = []

    def channel_closed(self, channel: RelayChannel) -> None:
        """Forget a closed connection; fire waiters once none is left."""
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._all_closed = self._all_closed, []
            for d in waiters:
                d.callback(None)

    def start_draining(self) -> None:
        """
        Close idle keep-alive connections now; mark busy ones to close after their
        response (with ``Connection: close`` when it has not started yet).
        """
        self.draining = True
        for channel in list(self.channels):
            channel.persistent = False
            for request in channel.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            if not channel.requests and channel.transport is not None:
                channel.transport.loseConnection()

    def abort_all(self) -> None:
        """Drop every connection now, without waiting for buffered writes."""
        for channel in list(self.channels):
            transport = channel.transport
            if transport is None:
                continue
            # TCP, unix and TLS transports can abort (ITCPTransport); others can only close.
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def all_closed(self) -> Deferred[None]:
        """Fires once every connection is closed (responses flushed)."""
        d: Deferred[None] = Deferred()
        if self.channels:
            self._all_closed.append(d)
        else:
            d.callback(None)
        return d

    def log(self, request: Any) -> None:
        # The resource logs one structured line per request itself; twisted.web's default
        # combined-log formatting costs about 40% of a small request (twisted-notes §0.14).
        pass
