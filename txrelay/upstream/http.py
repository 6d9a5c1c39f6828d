# -*- test-case-name: tests.test_upstream_openai -*-
"""
The HTTP client side shared by upstream kinds: one connection pool and treq client per
provider, reading bounded bodies, and turning transport failures into Anthropic errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookiejar import CookieJar
from typing import Any, cast

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txrelay.config import ProviderConfig
from txrelay.protocol.errors import RelayError, connection_error
from txrelay.upstream.tls import StrictPolicyForHTTPS

#: The largest error or non-streaming body read from an upstream.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024


@implementer(IBodyProducer)
@attrs.define(eq=False)
class BytesProducer:
    """
    A request body already in memory, written at once.

    treq wraps ``bytes`` in a ``FileBodyProducer``, which writes from a cooperator task on a
    later reactor turn; writing synchronously lets the headers and body leave in one send.
    """

    body: bytes
    length: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.length = len(self.body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _NoCookies(CookieJar):
    """
    A cookie jar that keeps nothing.

    treq's client stores every ``Set-Cookie`` an upstream sends and replays it on later
    requests; in a relay those requests come from every client, so no cookie may persist.
    """

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


class _QuietFactory(_HTTP11ClientFactory):
    # One "Starting factory" log line per upstream connection is noise.
    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


@attrs.define(eq=False)
class UpstreamClient:
    """A treq client with its own pool and the provider's connect timeout."""

    reactor: Any
    provider: ProviderConfig
    http: HTTPClient = attrs.field(init=False)
    pool: HTTPConnectionPool | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:  # validation only: nothing will be sent
            self.http = None  # type: ignore[assignment]
            return
        pool = _QuietPool(self.reactor, persistent=True)  # type: ignore[no-untyped-call]
        pool.maxPersistentPerHost = self.provider.max_idle_connections
        # Below common upstream/load-balancer keep-alive limits (twisted-notes §4).
        pool.cachedConnectionTimeout = 50
        pool.retryAutomatically = False
        self.pool = pool
        agent = Agent(self.reactor, connectTimeout=self.provider.timeouts.connect, pool=pool,
                      contextFactory=StrictPolicyForHTTPS(self.provider.tls))
        self.http = HTTPClient(agent, cookiejar=cast("Any", _NoCookies()))

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Deferred[Any]:
        """POST ``body``; the Deferred fires with the (unbuffered) response headers."""
        hdrs: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in headers.items()}
        return self.http.request(
            "POST", url, data=BytesProducer(body), headers=hdrs,
            unbuffered=True, allow_redirects=False, reactor=self.reactor,
            timeout=self.provider.timeouts.first_byte,
        )

    def close(self) -> Deferred[None] | None:
        """Close pooled connections (at shutdown and in tests)."""
        return self.pool.closeCachedConnections() if self.pool is not None else None


def transport_error(failure: Failure, provider: str, first_byte: float) -> RelayError:
    """
    The Anthropic error for an upstream request that failed before its response.

    treq's ``timeout`` cancels the request, which fails with ``ResponseNeverReceived``
    wrapping a ``CancelledError`` (twisted-notes §3.4). A client that went away cancels it
    the same way, but by then the upstream source has ended and ignores the error.
    """
    value = failure.value
    no_response = RelayError(
        "timeout_error", f"{provider}: no response from the upstream within {first_byte:g} s")
    if isinstance(value, ierror.TimeoutError | ierror.ConnectingCancelledError):
        return RelayError("timeout_error", f"{provider}: timed out connecting to the upstream")
    if isinstance(value, CancelledError):
        return no_response
    if isinstance(value, _newclient.ResponseNeverReceived | _newclient.RequestTransmissionFailed):
        reasons = getattr(value, "reasons", []) or []
        if any(r.check(CancelledError) for r in reasons):
            return no_response
        detail = "; ".join(str(r.value) or type(r.value).__name__ for r in reasons) or str(value)
        return connection_error(detail, upstream=provider)
    if isinstance(value, ierror.ConnectError | ierror.DNSLookupError | OSError):
        return connection_error(f"{value.__class__.__name__}: {value}", upstream=provider)
    return RelayError("api_error", f"{provider}: upstream request failed: {value!r}", status=502)


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes], limit: int, idle: float, reactor: Any) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.idle = idle
        self.reactor = reactor
        self.timer: Any = None

    def connectionMade(self) -> None:
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = self.reactor.callLater(self.idle, self._expired)

    def _expired(self) -> None:
        self.timer = None
        if not self.done.called:
            self.done.errback(RelayError(
                "timeout_error", f"upstream sent nothing for {self.idle:g} seconds"))
        self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.called:
                self.done.errback(RelayError("api_error", "upstream response is too large"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)
        self._arm()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(RelayError(
                "api_error", f"upstream connection lost while reading: {reason.value}",
                status=502))


async def read_body(response: Any, *, idle: float, reactor: Any,
                    limit: int = MAX_UPSTREAM_BODY) -> bytes:
    """The whole body of a small upstream response, bounded in size and idle time."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done, limit, idle, reactor))
    return await done


def response_headers(response: Any) -> dict[str, str]:
    """An upstream response's headers: lower-case names, last value wins."""
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }


_ = treq  # treq's module-level API is not used: every provider has its own pool.
