# -*- test-case-name: tests.test_upstream_http -*-
"""
The HTTP client side shared by upstream kinds: one connection pool and treq client per
provider, sending with a first-byte deadline and one retry on a stale pooled connection,
reading bounded bodies, and turning transport failures into plain-words Anthropic errors.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from http.cookiejar import CookieJar
from typing import Any, cast

import attrs
from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txrelay import tracing
from txrelay.config import ProviderConfig
from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError, connection_error
from txrelay.server.directwrite import write_now
from txrelay.upstream.fastbody import LeanClientFactory
from txrelay.upstream.tls import HANDSHAKE_FAILED, StrictPolicyForHTTPS, describe_tls_failure

log = RelayLogger()

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
        # Written once (Twisted never retries a request with a body): twisted.web's request
        # keeps its producer for as long as the answer streams, the body need not stay.
        body, self.body = self.body, b""
        consumer.write(body)
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

    def add_cookie_header(self, request: Any) -> None:
        # Nothing is ever stored, so nothing is sent; skips the stdlib's lock and scan.
        pass


#: The jar passed as treq's per-request ``cookies``: treq builds a new (empty) jar per
#: request from anything that is not a ``CookieJar``.
_NO_COOKIES = _NoCookies()


@implementer(IStreamClientEndpoint)
@attrs.frozen
class _QuietEndpoint:
    """
    Connects like ``endpoint``, without a "Starting factory" log line per connection, and
    with ``TCP_NODELAY`` on the socket (under TLS too).
    """

    endpoint: Any

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        protocolFactory.noisy = False
        result: Deferred[Any] = self.endpoint.connect(protocolFactory)
        result.addCallback(_no_delay)
        return result


def _no_delay(protocol: Any) -> Any:
    """
    Turn Nagle's algorithm off on ``protocol``'s TCP connection: a request is written whole,
    but the next one on a pooled connection must not wait for the ACK of the last.
    """
    transport = getattr(protocol, "transport", None)
    for _ in range(3):  # the TCP transport itself, or under a TLS layer or two
        set_nodelay = getattr(transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            with contextlib.suppress(OSError):
                set_nodelay(True)
            break
        transport = getattr(transport, "transport", None)
    return protocol


class _URI(EncodedURL):
    """An :class:`EncodedURL` already in its URI form: ``to_uri()`` is itself."""

    def to_uri(self) -> EncodedURL:
        return self

    def to_text(self, with_password: bool = False) -> str:
        # Immutable, and treq asks for its text per request: rendered once.
        text: str | None = self.__dict__.get("_text")
        if text is None:
            text = super().to_text(with_password)
            if not with_password:
                self.__dict__["_text"] = text
        return text


@functools.lru_cache(maxsize=4096)
def uri_of(url: str) -> EncodedURL:
    """
    ``url`` parsed once for treq: ``treq.HTTPClient.request`` parses its URL and converts it
    to URI form (IDNA per host label) on every call, ~7 % of a small request. When the URI
    form is the URL itself (the case for every ASCII upstream URL), this returns an
    :class:`EncodedURL` whose ``to_uri()`` is a no-op, so treq sends exactly the same bytes.
    """
    parsed = EncodedURL.from_text(url)
    if parsed.to_uri().to_text() != url:
        return parsed
    fixed = _URI.from_text(url)
    return fixed if fixed.to_text() == url else parsed


class _Pool(HTTPConnectionPool):
    """
    A pool that connects quietly, reads bodies through :mod:`txrelay.upstream.fastbody`, and
    tells whether the last connection it gave was reused.
    """

    _factory = LeanClientFactory

    #: Whether the connection handed out by the latest :meth:`getConnection` came from the
    #: pool (it fires at once) rather than from a new connect.
    last_reused: bool = False

    #: The connection handed out by the latest :meth:`getConnection`, when it was reused.
    last_protocol: Any = None

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        d = super().getConnection(key, _QuietEndpoint(endpoint))
        self.last_reused = d.called
        self.last_protocol = None
        if d.called:
            d.addCallback(self._remember)
        return d

    def _remember(self, protocol: Any) -> Any:
        self.last_protocol = protocol
        return protocol


class _Agent(Agent):
    """An ``Agent`` that makes one endpoint per (scheme, host, port), not one per request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}

    def _getEndpoint(self, uri: Any) -> Any:
        endpoints = self._endpoints
        key = (uri.scheme, uri.host, uri.port)
        endpoint = endpoints.get(key)
        if endpoint is None:
            if len(endpoints) >= 64:
                endpoints.clear()
            endpoint = endpoints[key] = super()._getEndpoint(uri)  # type: ignore[no-untyped-call]
        return endpoint


class _StaleConnection(Exception):
    """A reused connection died before any byte of the answer: try once more."""


@attrs.define(eq=False)
class UpstreamClient:
    """
    A treq client with its own pool and the provider's timeouts.

    Idle connections are kept ``idle_connection_timeout`` seconds, below the keep-alive
    limit common servers enforce (uvicorn: 5 s), and a POST that fails on a reused
    connection before any byte of the answer is sent once more on a new connection.
    """

    reactor: Any
    provider: ProviderConfig
    http: HTTPClient = attrs.field(init=False)
    pool: _Pool | None = attrs.field(init=False, default=None)
    _fresh: HTTPClient = attrs.field(init=False)
    _tls_policy: StrictPolicyForHTTPS = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:  # validation only: nothing will be sent
            self.http = self._fresh = None  # type: ignore[assignment]
            return
        pool = _Pool(self.reactor, persistent=True)  # type: ignore[no-untyped-call]
        pool.maxPersistentPerHost = self.provider.max_idle_connections
        pool.cachedConnectionTimeout = self.provider.idle_connection_timeout  # type: ignore[assignment]
        pool.retryAutomatically = False
        self.pool = pool
        self._tls_policy = StrictPolicyForHTTPS(self.provider.tls)
        self.http = HTTPClient(self._agent(pool), cookiejar=cast("Any", _NO_COOKIES))
        unpooled = _Pool(self.reactor, persistent=False)  # type: ignore[no-untyped-call]
        self._fresh = HTTPClient(self._agent(unpooled), cookiejar=cast("Any", _NO_COOKIES))

    def _agent(self, pool: HTTPConnectionPool) -> Agent:
        """The one place this provider's Agents are made (TLS policy, connect timeout)."""
        return _Agent(self.reactor,
                      connectTimeout=self.provider.timeouts.connect, pool=pool,
                      contextFactory=self._tls_policy)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Any:
        """
        POST ``body`` and return the (unbuffered) response once its headers arrived.

        Raises :class:`RelayError` (plain words) when the upstream cannot be reached or gives
        no answer within ``timeouts.first_byte``; :class:`CancelledError` when the caller
        cancelled (a client that left, a drain), which is never reported as a timeout.
        """
        traced = tracing.active()
        if traced is not None:
            return await self._traced(traced, "POST", url, body, headers)
        return await self._post(url, body, headers)

    async def _traced(self, traced: tracing.Tracing, method: str, url: str,
                      body: bytes | None, headers: Mapping[str, str]) -> Any:
        """:meth:`post`/:meth:`get` in a CLIENT span, sending its ``traceparent`` upstream."""
        sent = dict(headers)
        with tracing.client_span(traced, method, url, sent) as span:
            try:
                if body is None:
                    response = await self._get(url, sent)
                else:
                    response = await self._post(url, body, sent)
            except RelayError as e:
                tracing.set_error(span, e.type)
                raise
            except CancelledError:
                span.set_attribute("txrelay.cancelled", True)
                raise
            span.set_attribute("http.response.status_code", response.code)
            if response.code >= 400:
                tracing.set_error(span, str(response.code))
            return response

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Any:
        try:
            return await self._attempt(self.http, url, body, headers, retry=True)
        except _StaleConnection:
            log.info("upstream {provider}: the server had closed a pooled connection; "
                     "retrying on a new connection", provider=self.provider.name)
            return await self._attempt(self._fresh, url, body, headers, retry=False)

    async def get(self, url: str, headers: Mapping[str, str]) -> Any:
        """GET ``url``; like :meth:`post` (timeouts, errors, the stale-connection retry)."""
        traced = tracing.active()
        if traced is not None:
            return await self._traced(traced, "GET", url, None, headers)
        return await self._get(url, headers)

    async def _get(self, url: str, headers: Mapping[str, str]) -> Any:
        try:
            return await self._attempt(self.http, url, None, headers, retry=True)
        except _StaleConnection:
            return await self._attempt(self._fresh, url, None, headers, retry=False)

    async def _attempt(self, http: HTTPClient, url: str, body: bytes | None,
                       headers: Mapping[str, str], *, retry: bool) -> Any:
        hdrs: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in headers.items()}
        data = BytesProducer(body) if body is not None else None
        d = http.request("POST" if body is not None else "GET", uri_of(url), data=data,
                         headers=hdrs, cookies=_NO_COOKIES,
                         unbuffered=True, allow_redirects=False, reactor=self.reactor)
        # Read right after the (synchronous) request call: it describes this request.
        reused = retry and self.pool is not None and self.pool.last_reused
        if reused and self.pool is not None and self.pool.last_protocol is not None:
            # On a reused connection the request was written synchronously: send it now
            # rather than on the reactor's next turn (one segment either way).
            write_now(getattr(self.pool.last_protocol, "transport", None), ())
        timer = self.reactor.callLater(self.provider.timeouts.first_byte, d.cancel)
        try:
            return await d
        except Exception:
            failure = Failure()
            if timer.called:
                raise first_byte_timeout(self.provider.name,
                                         self.provider.timeouts.first_byte) from None
            if _cancelled(failure):
                raise CancelledError() from None
            if retry and reused and _lost_before_answer(failure):
                raise _StaleConnection() from None
            raise transport_error(failure, self.provider.name) from None
        finally:
            if timer.active():
                timer.cancel()

    def close(self) -> Deferred[None] | None:
        """Close pooled connections (at shutdown and in tests)."""
        if self.pool is None:
            return None
        closed: Deferred[None] = self.pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return closed


def _value(failure: Failure) -> BaseException:
    value = failure.value
    return value if value is not None else Exception()


def _reasons(value: BaseException) -> list[BaseException]:
    """The low-level causes inside Twisted's wrapper exceptions (or the value itself)."""
    if isinstance(value, ResponseFailed | RequestTransmissionFailed):
        out: list[BaseException] = []
        for reason in getattr(value, "reasons", None) or []:
            out.extend(_reasons(_value(reason)))
        return out or [value]
    return [value]


def _cancelled(failure: Failure) -> bool:
    return any(isinstance(r, CancelledError | ierror.ConnectingCancelledError)
               for r in _reasons(_value(failure)))


def _lost_before_answer(failure: Failure) -> bool:
    """The connection closed or broke before any byte of the response (a stale connection)."""
    value = _value(failure)
    if not isinstance(value, ResponseNeverReceived | RequestTransmissionFailed):
        return False
    return all(isinstance(r, ierror.ConnectionDone | ierror.ConnectionLost)
               for r in _reasons(value))


def _tls_detail(value: BaseException) -> str:
    # pyOpenSSL's errors carry (library, function, reason) triples: the reasons are words.
    words: list[str] = []
    for arg in value.args:
        for item in arg if isinstance(arg, list) else [arg]:
            if isinstance(item, tuple) and item and isinstance(item[-1], str) and item[-1]:
                words.append(item[-1])
            elif isinstance(item, str) and item:
                words.append(item)
    return ", ".join(dict.fromkeys(words))


def plain_reason(value: BaseException) -> str:
    """What a low-level connection failure means, in plain words (no repr, no class name)."""
    # Our own verification's verdict, or a peer's alert we can name; other TLS failures
    # keep OpenSSL's reason words below.
    tls = describe_tls_failure(value)
    if tls is not None and tls != HANDSHAKE_FAILED:
        return tls
    if isinstance(value, ierror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, ierror.DNSLookupError):
        return "the host name could not be resolved"
    if isinstance(value, ierror.TimeoutError | ierror.TCPTimedOutError):
        return "timed out connecting"
    if isinstance(value, ierror.NoRouteError):
        return "no route to the host"
    if isinstance(value, ierror.ConnectionDone):
        return "the upstream closed the connection"
    if isinstance(value, ierror.ConnectionLost):
        return "the connection was reset"
    module = type(value).__module__
    if module.startswith(("OpenSSL", "service_identity")) or isinstance(
            value, ierror.SSLError | ierror.CertificateError | ierror.VerifyError):
        detail = _tls_detail(value)
        return f"TLS failure ({detail})" if detail else "TLS failure"
    if isinstance(value, ierror.ConnectError):
        os_error = getattr(value, "osError", None)
        strerror = getattr(os_error, "strerror", None)
        return f"could not connect ({strerror.lower()})" if isinstance(strerror, str) \
            else "could not connect"
    if isinstance(value, OSError) and value.strerror:
        return value.strerror.lower()
    return "the connection failed"


def _joined(values: list[BaseException]) -> str:
    return "; ".join(dict.fromkeys(plain_reason(v) for v in values))


def first_byte_timeout(provider: str, seconds: float) -> RelayError:
    """The upstream accepted the request but sent no response headers in time (504)."""
    return RelayError("timeout_error",
                      f"{provider}: no response from the upstream within {seconds:g} s")


def transport_error(failure: Failure, provider: str) -> RelayError:
    """
    The Anthropic error for an upstream request that failed before its response.

    Messages say what happened in plain words: "connection refused", "the upstream closed
    the connection before answering", "TLS failure (certificate verify failed)".
    """
    value = _value(failure)
    if isinstance(value, RelayError):
        return value
    if isinstance(value, ierror.TimeoutError | ierror.ConnectingCancelledError):
        return RelayError("timeout_error", f"{provider}: timed out connecting to the upstream")
    reasons = _reasons(value)
    if isinstance(value, ResponseNeverReceived) and all(
            isinstance(r, ierror.ConnectionDone | ierror.ConnectionLost) for r in reasons):
        what = ("the upstream closed the connection before answering"
                if all(isinstance(r, ierror.ConnectionDone) for r in reasons)
                else "the connection was reset before the upstream answered")
        return connection_error(what, upstream=provider)
    if isinstance(value, ResponseNeverReceived | ierror.ConnectError | OSError) \
            or type(value).__module__.startswith(("OpenSSL", "service_identity")):
        return connection_error(_joined(reasons), upstream=provider)
    if isinstance(value, RequestTransmissionFailed):
        return connection_error(f"sending the request failed: {_joined(reasons)}",
                                upstream=provider)
    if isinstance(value, ResponseFailed):
        return connection_error(
            f"the answer broke off in its response headers: {_joined(reasons)}",
            upstream=provider)
    log.warn("upstream {provider}: request failed: {error}", provider=provider,
             error=type(value).__name__)
    return RelayError("api_error", f"{provider}: the upstream request failed", status=502)


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes], limit: int, idle: float, reactor: Any) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.idle = idle
        self.reactor = reactor
        self.timer: Any = None
        self.last_read = 0.0
        self.cancelled = False

    def connectionMade(self) -> None:
        self.last_read = self.reactor.seconds()
        self.timer = self.reactor.callLater(self.idle, self._check)

    def _check(self) -> None:
        # One timer compared against the last read, not re-armed on every chunk.
        self.timer = None
        quiet = self.reactor.seconds() - self.last_read
        if quiet < self.idle - 1e-6:
            self.timer = self.reactor.callLater(self.idle - quiet, self._check)
            return
        self._give_up(RelayError("timeout_error",
                                 f"upstream sent nothing for {self.idle:g} seconds"))

    def _give_up(self, error: BaseException | None) -> None:
        """Stop reading: the connection is closed, never returned to the pool half-read."""
        self._cancel_timer()
        if error is not None and not self.done.called:
            self.done.errback(error)
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def cancel(self, _: Deferred[bytes]) -> None:
        """The reader was cancelled (the client left): drop the upstream at once."""
        self.cancelled = True  # the Deferred fails with CancelledError, nothing else
        self._give_up(None)

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def dataReceived(self, data: bytes) -> None:
        if self.done.called or self.cancelled:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._give_up(RelayError("api_error", "upstream response is too large",
                                     status=502))
            return
        self.parts.append(data)
        self.last_read = self.reactor.seconds()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancel_timer()
        if self.done.called or self.cancelled:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(RelayError(
                "api_error", "upstream connection lost in the middle of its answer: "
                f"{_joined(_reasons(_value(reason)))}", status=502))


async def read_body(response: Any, *, idle: float, reactor: Any,
                    limit: int = MAX_UPSTREAM_BODY) -> bytes:
    """
    The whole body of a small upstream response, bounded in size and idle time.

    Cancelling the read closes the upstream connection (the generation stops) and its timer.
    """
    collector: _Collect | None = None

    def cancel(d: Deferred[bytes]) -> None:
        if collector is not None:
            collector.cancel(d)

    done: Deferred[bytes] = Deferred(cancel)
    collector = _Collect(done, limit, idle, reactor)
    response.deliverBody(collector)
    return await done


def response_headers(response: Any) -> dict[str, str]:
    """An upstream response's headers: lower-case names, last value wins."""
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
    }
