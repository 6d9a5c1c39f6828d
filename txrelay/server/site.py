# -*- test-case-name: tests.test_server -*-
"""The twisted.web site: a request class that enforces the body limit, and the access log."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site


class RelayRequest(Request):
    """
    A request whose body is kept in memory up to the site's limit.

    twisted.web has no body limit of its own and spills bodies over 100 kB to temporary
    files; the relay keeps at most ``max_request_bytes`` in memory and discards the rest,
    then answers 413.
    """

    too_large: bool = False
    _received: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The relay never reads form submissions: skip twisted.web's per-POST content-type
        # parse (an email.message round trip, about 30 µs a request).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_request_bytes", 32 * 1024 * 1024))

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self._received = 0
        self.too_large = length is not None and length > self._limit()

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.too_large = True
            self.content = io.BytesIO()
            return
        assert self.content is not None
        self.content.write(data)


class RelayChannel(HTTPChannel):
    """An HTTP/1.1 connection the site keeps track of, so a drain can close it gracefully."""

    site: RelaySite

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.site.channels.add(self)
        if self.site.draining:
            self.persistent = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
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
                 reactor: Any) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)  # type: ignore[no-untyped-call]
        self.max_request_bytes = max_request_bytes
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
