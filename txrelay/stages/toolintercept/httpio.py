# -*- test-case-name: tests.stages.toolintercept.test_fetch -*-
"""HTTP plumbing shared by the search providers and the fetcher: bounded bodies, no cookies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookiejar import CookieJar
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss

T = TypeVar("T")


class NoCookies(CookieJar):
    """A cookie jar that keeps nothing (requests come from many clients)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


class BodyTooLarge(Exception):
    """A response body passed its size limit (the connection was closed)."""


class BodyFailed(Exception):
    """The connection was lost before the body was complete."""


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(BodyTooLarge(f"more than {self.limit} bytes"))
            self.stop()
            return
        self.parts.append(data)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(BodyFailed(str(reason.value)))


async def read_limited(response: Any, limit: int) -> bytes:
    """
    The body of ``response``, at most ``limit`` bytes (:class:`BodyTooLarge` past it);
    cancelling the wait closes the connection.
    """
    holder: list[_Collect] = []
    done: Deferred[bytes] = Deferred(lambda _: holder[0].stop() if holder else None)
    collector = _Collect(done, limit)
    holder.append(collector)
    response.deliverBody(collector)
    return await done


def discard(response: Any) -> None:
    """Close ``response``'s connection without reading its body."""
    collector = _Collect(Deferred(), 0)
    response.deliverBody(collector)
    collector.stop()


async def bounded(reactor: Any, seconds: float, work: Callable[[], Awaitable[T]]) -> T:
    """
    ``await work()``, cancelled after ``seconds``: then ``defer.TimeoutError`` is raised,
    whatever the cancelled work raised (treq's ``ResponseNeverReceived``, say).
    """
    async def run() -> T:
        return await work()

    d: Deferred[T] = Deferred.fromCoroutine(run())
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    timer = reactor.callLater(seconds, expire)
    try:
        return await d
    except Exception:
        if expired:
            raise defer.TimeoutError(f"not done within {seconds:g} s") from None
        raise
    finally:
        if timer.active():
            timer.cancel()


def header(response: Any, name: str) -> str | None:
    """A response header's last value, decoded as latin-1."""
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return values[-1].decode("latin-1") if values else None


class _QuietFactory(_HTTP11ClientFactory):
    # One "Starting factory" log line per connection is noise.
    noisy = False


class QuietPool(HTTPConnectionPool):
    """A connection pool whose connections do not log their start and stop."""

    _factory = _QuietFactory

    def __init__(self, reactor: Any, persistent: bool) -> None:
        super().__init__(reactor, persistent)  # type: ignore[no-untyped-call]
