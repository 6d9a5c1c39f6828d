# -*- test-case-name: tests.test_server -*-
"""The twisted.web site: a request class that enforces the body limit, and the access log."""

from __future__ import annotations

import io
from typing import Any

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
        self.content.write(data)


class RelaySite(Site):
    """A :class:`Site` with the relay's request class and without the per-line access log."""

    requestFactory = RelayRequest

    def __init__(self, resource: Any, *, max_request_bytes: int, timeout: float,
                 reactor: Any) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.max_request_bytes = max_request_bytes

    def log(self, request: Any) -> None:
        # The resource logs one structured line per request itself; twisted.web's default
        # combined-log formatting costs about 40% of a small request (twisted-notes §0.14).
        pass

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if isinstance(channel, HTTPChannel):
            channel.site = self
        return channel
