"""The upstream HTTP client in memory: cancellable body reads, plain-words failures."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hyperlink import EncodedURL
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)

from txrelay.protocol.errors import RelayError
from txrelay.upstream.http import read_body, transport_error, uri_of


@attrs.define
class BodyTransport:
    stopped: bool = False

    def stopProducing(self) -> None:
        self.stopped = True


@attrs.define
class Response:
    transport: BodyTransport = attrs.Factory(BodyTransport)
    protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def reading(clock: Clock) -> tuple[Response, Deferred[bytes]]:
    response = Response()
    d = Deferred.fromCoroutine(read_body(response, idle=5, reactor=clock))
    return response, d


def test_cancelling_a_body_read_closes_the_upstream_and_its_timer() -> None:
    clock = Clock()
    response, d = reading(clock)
    response.protocol.dataReceived(b'{"partial": ')
    failures: list[Failure] = []
    d.addErrback(failures.append)
    d.cancel()
    assert response.transport.stopped
    assert failures and failures[0].check(CancelledError)
    assert clock.getDelayedCalls() == []
    # The connection's end afterwards changes nothing.
    response.protocol.connectionLost(Failure(ierror.ConnectionDone()))
    assert len(failures) == 1


def test_a_body_read_completes_and_times_out() -> None:
    clock = Clock()
    response, d = reading(clock)
    response.protocol.dataReceived(b"ok")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert d.result == b"ok"
    response, d = reading(clock)
    clock.advance(5)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(RelayError) and failures[0].value.type == "timeout_error"
    assert response.transport.stopped


def _wrapped(kind: type, *reasons: BaseException) -> Failure:
    return Failure(kind([Failure(r) for r in reasons]))


@pytest.mark.parametrize(("failure", "message"), [
    (Failure(ierror.ConnectionRefusedError()), "connection refused"),
    (Failure(ierror.DNSLookupError("nowhere.invalid")), "the host name could not be resolved"),
    (_wrapped(ResponseNeverReceived, ierror.ConnectionDone()),
     "the upstream closed the connection before answering"),
    (_wrapped(ResponseNeverReceived, ierror.ConnectionLost()),
     "the connection was reset before the upstream answered"),
    (_wrapped(ResponseNeverReceived,
              SSL.Error([("SSL routines", "", "certificate verify failed")])),
     "TLS failure (certificate verify failed)"),
    (_wrapped(RequestTransmissionFailed, ierror.ConnectionLost()),
     "sending the request failed: the connection was reset"),
    (_wrapped(ResponseFailed, ierror.ConnectionDone()),
     "the answer broke off in its response headers: the upstream closed the connection"),
])
def test_transport_failures_in_plain_words(failure: Failure, message: str) -> None:
    error = transport_error(failure, "up")
    assert error.status == 502
    assert error.message == f"up: upstream connection failed: {message}"


def test_an_unexpected_failure_names_no_internals() -> None:
    error = transport_error(Failure(KeyError("boom")), "up")
    assert error.message == "up: the upstream request failed"


@attrs.define
class StubHTTP:
    """Stands in for treq's client: each request gets the next scripted outcome."""

    pool: Any
    outcomes: list[Any]
    requests: int = 0

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.requests += 1
        outcome = self.outcomes.pop(0)
        reused, result = outcome

        def cancelled(d: Deferred[Any]) -> None:
            # What Agent does: the request fails wrapping the CancelledError.
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        d: Deferred[Any] = Deferred(cancelled)
        if self.pool is not None:
            self.pool.last_reused = reused
        if isinstance(result, Failure):
            d.errback(result)
        elif result is not None:
            d.callback(result)
        return d


def client(clock: Clock, *outcomes: Any, fresh: list[Any] | None = None,
           ) -> tuple[Any, StubHTTP, StubHTTP]:
    from txrelay.config import ProviderConfig, Timeouts
    from txrelay.upstream.http import UpstreamClient

    provider = ProviderConfig("up", "openai-chat", "http://127.0.0.1:1/v1",
                              timeouts=Timeouts(first_byte=30))
    c = UpstreamClient(clock, provider)
    pooled = StubHTTP(c.pool, list(outcomes))
    unpooled = StubHTTP(None, list(fresh or []))
    c.http, c._fresh = pooled, unpooled  # type: ignore[assignment]
    return c, pooled, unpooled


def post(c: Any) -> tuple[Deferred[Any], list[Any]]:
    d = Deferred.fromCoroutine(c.post("http://127.0.0.1:1/v1/chat", b"{}", {}))
    results: list[Any] = []
    d.addBoth(results.append)
    return d, results


def test_our_cancel_is_a_cancel_and_the_deadline_a_timeout() -> None:
    clock = Clock()
    c, _, _ = client(clock, (False, None), (False, None))
    d, results = post(c)
    d.cancel()
    assert results[0].check(CancelledError)
    assert clock.getDelayedCalls() == []
    d, results = post(c)
    clock.advance(30)
    assert results[0].check(RelayError)
    assert results[0].value.type == "timeout_error"
    assert results[0].value.message == "up: no response from the upstream within 30 s"


def test_a_reused_connection_lost_before_answering_is_retried_once() -> None:
    clock = Clock()
    lost = _wrapped(ResponseNeverReceived, ierror.ConnectionDone())
    c, pooled, unpooled = client(clock, (True, lost), fresh=[(False, "response")])
    _, results = post(c)
    assert results == ["response"]
    assert (pooled.requests, unpooled.requests) == (1, 1)


@pytest.mark.parametrize("reused", [False, True])
def test_no_retry_for_a_new_connection_or_a_second_failure(reused: bool) -> None:
    clock = Clock()
    lost = _wrapped(ResponseNeverReceived, ierror.ConnectionDone())
    c, pooled, unpooled = client(clock, (reused, lost), fresh=[(False, lost)])
    _, results = post(c)
    assert results[0].check(RelayError) and results[0].value.status == 502
    assert pooled.requests == 1 and unpooled.requests == (1 if reused else 0)


def test_no_retry_once_the_answer_started() -> None:
    clock = Clock()
    broke = _wrapped(ResponseFailed, ierror.ConnectionDone())
    c, _, unpooled = client(clock, (True, broke), fresh=[(False, "response")])
    _, results = post(c)
    assert results[0].check(RelayError) and unpooled.requests == 0


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/v1/chat/completions",
    "https://api.openai.com/v1/chat/completions",
    "https://API.Example.com:443/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
    "http://bücher.example/ä/v1?q=a b",
])
def test_a_cached_uri_sends_what_treq_would_send(url: str) -> None:
    assert uri_of(url).to_uri().to_text() == EncodedURL.from_text(url).to_uri().to_text()


def test_a_url_treq_cannot_convert_fails_the_same_way() -> None:
    url = "http://[::1]:9/v1/x"  # hyperlink's IDNA step rejects it, in treq too
    with pytest.raises(ValueError) as ours:
        uri_of(url)
    with pytest.raises(ValueError) as theirs:
        EncodedURL.from_text(url).to_uri()
    assert type(ours.value) is type(theirs.value)


@settings(max_examples=200, deadline=None)
@given(host=st.sampled_from(["127.0.0.1", "api.example.com", "Upper.Example", "xn--bcher-kva.de",
                             "bücher.de"]),
       path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF,
                                  blacklist_characters="#?"), max_size=30),
       query=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                   blacklist_characters="#"), max_size=20))
def test_uri_of_matches_treqs_conversion(host: str, path: str, query: str) -> None:
    url = f"https://{host}/v1/{path}" + (f"?{query}" if query else "")
    assert uri_of(url).to_uri().to_text() == EncodedURL.from_text(url).to_uri().to_text()


def test_a_cached_uri_renders_its_text_once_and_as_treq_would() -> None:
    url = "https://api.example.com/v1/chat/completions?x=1"
    parsed = uri_of(url)
    assert parsed.to_text() == url == parsed.to_text() == EncodedURL.from_text(url).to_text()
    assert parsed.__dict__["_text"] == url


def test_one_endpoint_per_host_and_port() -> None:
    """Also the contract: ``Agent.request`` asks ``_getEndpoint`` for the parsed URI."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import Agent, HTTPConnectionPool

    from txrelay.upstream.http import _Agent

    reactor = MemoryReactorClock()
    made: list[Any] = []
    agent = _Agent(reactor, pool=HTTPConnectionPool(reactor))  # type: ignore[no-untyped-call]
    real = agent._endpointFactory.endpointForURI

    def counted(uri: Any) -> Any:
        made.append((uri.scheme, uri.host, uri.port))
        return real(uri)

    agent._endpointFactory.endpointForURI = counted  # type: ignore[method-assign]
    for url in (b"http://up:8000/a", b"http://up:8000/b", b"http://up:8001/a",
                b"http://up:8000/c"):
        agent.request(b"GET", url)
    assert made == [(b"http", b"up", 8000), (b"http", b"up", 8001)]
    assert agent._getEndpoint.__func__ is not Agent._getEndpoint  # type: ignore[attr-defined]


def test_the_cookie_jar_never_sends_a_cookie() -> None:
    from txrelay.upstream.http import _NO_COOKIES

    class Req:
        headers: dict[str, str] = {}

        def add_unredirected_header(self, name: str, value: str) -> None:
            self.headers[name] = value

    req = Req()
    _NO_COOKIES.add_cookie_header(req)
    assert req.headers == {} and list(_NO_COOKIES) == []


def test_the_body_producer_writes_its_body_once_and_does_not_keep_it() -> None:
    # twisted.web's request keeps its producer for as long as the answer streams (issue 13).
    from txrelay.upstream.http import BytesProducer

    written: list[bytes] = []

    @attrs.define
    class Consumer:
        def write(self, data: bytes) -> None:
            written.append(data)

    body = b'{"model": "m"}' * 100
    producer = BytesProducer(body)
    done = producer.startProducing(Consumer())
    assert written == [body] and producer.length == len(body)
    assert done.called and producer.body == b""
