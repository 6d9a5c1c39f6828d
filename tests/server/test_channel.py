"""The front door in memory: framing errors, early answers, the buffer budget, deadlines."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource

from tests.relayproc import DEMO_KEY
from txrelay.config import hash_key
from txrelay.protocol.errors import RelayError
from txrelay.server.channel import FrontDoorChannel
from txrelay.server.frontdoor import FrontDoorPolicy, reaches_pipeline
from txrelay.server.resource import _route
from txrelay.server.site import RelaySite
from txrelay.stages.auth import AuthStage

KEY = "front-door-key"
LIMIT = 4096


class Echo(Resource):
    """Answers with the body it got; counts the requests it rendered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render(self, request: Any) -> bytes:
        self.rendered += 1
        return b"ok:" + request.content.getvalue()


def make_site(**policy: Any) -> tuple[RelaySite, Echo, MemoryReactorClock]:
    clock = MemoryReactorClock()
    resource = Echo()
    options: dict[str, Any] = {"max_request_bytes": LIMIT, "max_buffered_bytes": 4 * LIMIT,
                               **policy}
    site = RelaySite(resource, max_request_bytes=options["max_request_bytes"], timeout=75,
                     reactor=clock, front_door=FrontDoorPolicy(**options))
    return site, resource, clock


def connect(site: RelaySite) -> tuple[FrontDoorChannel, StringTransport]:
    channel = site.buildProtocol(None)
    assert isinstance(channel, FrontDoorChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_error(raw: bytes, status: int, error_type: str) -> dict[str, Any]:
    """``raw`` is one complete Anthropic-shaped error response with a request id."""
    got, headers, body = parse(raw)
    assert got == status, raw
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    payload = json.loads(body)
    assert payload["type"] == "error"
    assert payload["error"]["type"] == error_type
    assert headers["request-id"].startswith("req_")
    assert payload["request_id"] == headers["request-id"]
    assert headers["connection"] == "close"
    return payload


HEAD = b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\n"
# With the integration relay's key, so that body framing is what the relay objects to.
POST = HEAD + b"x-api-key: " + DEMO_KEY.encode() + b"\r\n"

MALFORMED: list[tuple[str, bytes, int]] = [
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("two-part request line", b"GET /\r\n\r\n", 400),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\n\r\n", 400),
    ("lower-case version", b"GET / http/1.1\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\n\r\n", 400),
    ("non-ASCII target", b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
    ("DEL in target", b"GET /\x7f HTTP/1.1\r\n\r\n", 400),
    ("byte 0x90 in target", b"GET /\x90 HTTP/1.1\r\n\r\n", 400),
    ("NUL in request line", b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
    ("tab in request line", b"GET\t/ HTTP/1.1\r\n\r\n", 400),
    ("bare LF everywhere", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("bare LF in a header", b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
    ("bare LF at the start", b"\nGET / HTTP/1.1\r\n\r\n", 400),
    ("header without colon", b"GET / HTTP/1.1\r\nHost\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("empty header name", b"GET / HTTP/1.1\r\n: x\r\n\r\n", 400),
    ("CR in header value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
    ("NUL in header value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ("Content-Length 10^23", POST + b"Content-Length: " + b"1" + b"0" * 23 + b"\r\n\r\n", 400),
    ("negative Content-Length", POST + b"Content-Length: -1\r\n\r\n", 400),
    ("Content-Length with sign", POST + b"Content-Length: +5\r\n\r\nhello", 400),
    ("Content-Length list", POST + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("two Content-Lengths", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    ("hex Content-Length", POST + b"Content-Length: 0x10\r\n\r\n", 400),
    ("CL and TE", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("TE and CL", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
    ("unknown TE", POST + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("TE list", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 400),
    ("two TE headers", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                              b"\r\n\r\n", 400),
    ("chunk size 2^80", POST + b"Transfer-Encoding: chunked\r\n\r\n"
                        + b"%x" % 2**80 + b"\r\nabc", 400),
    ("chunk size not hex", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("chunk size 0x prefix", POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n", 400),
    ("negative chunk size", POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n", 400),
    ("empty chunk size", POST + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n", 400),
    ("chunk without CRLF", POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", 400),
    ("bad chunk extension", POST + b"Transfer-Encoding: chunked\r\n\r\n5;\x00\r\nhello", 400),
    ("chunk-size line too long", POST + b"Transfer-Encoding: chunked\r\n\r\n"
                                 + b"0" * 2000, 400),
    ("CR in request line", b"GET / HTTP/1.1\r\r\n\r\n", 400),
    ("trailing space in request line", b"GET / HTTP/1.1 \r\n\r\n", 400),
    ("continuation before any header", b"GET / HTTP/1.1\r\n folded\r\n\r\n", 400),
    ("empty Content-Length", POST + b"Content-Length: \r\n\r\n", 400),
    ("spaced Content-Length", POST + b"Content-Length: 1 0\r\n\r\n", 400),
    ("non-ASCII digits in Content-Length", POST + b"Content-Length: \xd9\xa5\r\n\r\n", 400),
    ("TE chunked, identity", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("oversized chunk trailer", POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: "
                                + b"a" * 70_000 + b"\r\n\r\n", 400),
    ("long request line", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
    ("long unterminated request line", b"GET /" + b"a" * 100_000, 414),
    ("long header line", b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ("many header lines", b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 90 + b"\r\n" * 1
                          + (b"X-Pad: " + b"a" * 90 + b"\r\n") * 200 + b"\r\n", 431),
    ("Content-Length over the limit", POST + b"Content-Length: %d\r\n\r\n" % (LIMIT + 1), 413),
    ("Content-Length 10 GB", POST + b"Content-Length: 10000000000\r\n\r\n" + b"x" * 1000, 413),
    ("chunk over the limit", POST + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (LIMIT + 1),
     413),
    ("chunks adding up over the limit", POST + b"Transfer-Encoding: chunked\r\n\r\n"
     + (b"400\r\n" + b"x" * 1024 + b"\r\n") * 5, 413),
]


@pytest.mark.parametrize(("data", "status"), [(d, s) for _, d, s in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_requests_get_an_anthropic_error_at_once(
    data: bytes, status: int, logged_failures: list[dict[str, Any]],
) -> None:
    site, resource, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(data)
    error_type = {400: "invalid_request_error", 413: "request_too_large",
                  414: "invalid_request_error", 431: "invalid_request_error"}[status]
    assert_error(transport.value(), status, error_type)
    assert transport.disconnecting
    assert resource.rendered == 0
    assert logged_failures == []


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_bare_lf_is_found_across_reads(split: int) -> None:
    site, _, _ = make_site()
    channel, transport = connect(site)
    data = b"GET / HTTP/1.1\r\nHost: x\n\r\n"
    for i in range(0, len(data), split):
        channel.dataReceived(data[i:i + split])
    assert_error(transport.value(), 400, "invalid_request_error")


def test_bare_lf_in_a_body_is_fine() -> None:
    site, resource, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Content-Length: 4\r\n\r\na\nb\n")
    assert parse(transport.value())[2] == b"ok:a\nb\n"
    assert resource.rendered == 1


def test_valid_requests_pass_and_keep_alive() -> None:
    site, resource, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(
        POST + b"Content-Length: 5\r\n\r\nhello"
        + POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        + b"\r\nGET /x HTTP/1.1\r\n\r\n")
    out = transport.value()
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert b"ok:hello" in out
    assert b"ok:abcde" in out
    assert not transport.disconnecting
    assert resource.rendered == 3
    assert site.buffer_budget.used == 0


def test_body_at_the_limit_is_accepted() -> None:
    site, _resource, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Content-Length: %d\r\n\r\n" % LIMIT + b"x" * LIMIT)
    assert parse(transport.value())[0] == 200
    channel.dataReceived(POST + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % LIMIT
                         + b"y" * LIMIT + b"\r\n0\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2


def test_too_large_stops_reading() -> None:
    site, _resource, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Content-Length: 10000000000\r\n\r\n")
    assert_error(transport.value(), 413, "request_too_large")
    before = transport.value()
    channel.dataReceived(b"x" * 100_000)
    assert transport.value() == before
    assert channel.requests[0].content is None  # no body buffer was ever made
    assert transport.disconnecting


def test_chunked_body_passing_the_limit_stops_at_once() -> None:
    site, _, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(4):
        channel.dataReceived(b"400\r\n" + b"x" * 1024 + b"\r\n")
    assert transport.value() == b""
    channel.dataReceived(b"1\r\n")
    channel.dataReceived(b"x")
    assert_error(transport.value(), 413, "request_too_large")


# -- 100-continue and header-time checks ------------------------------------------------------

def auth_site() -> tuple[RelaySite, Echo, MemoryReactorClock]:
    return make_site(header_checks=(AuthStage({"k": bytes.fromhex(hash_key(KEY))}),))


def test_expect_continue_with_an_oversized_length_gets_413_not_100() -> None:
    site, _, _ = make_site()
    channel, transport = connect(site)
    channel.dataReceived(HEAD + b"Expect: 100-continue\r\nContent-Length: 99999\r\n\r\n")
    assert b"100 Continue" not in transport.value()
    assert_error(transport.value(), 413, "request_too_large")


def test_missing_key_is_401_before_the_body() -> None:
    site, resource, _ = auth_site()
    channel, transport = connect(site)
    channel.dataReceived(HEAD + b"Expect: 100-continue\r\nContent-Length: 3000\r\n\r\n")
    assert b"100 Continue" not in transport.value()
    body = assert_error(transport.value(), 401, "authentication_error")
    assert "x-api-key" in body["error"]["message"]
    assert resource.rendered == 0
    assert site.buffer_budget.used == 0


@pytest.mark.parametrize("header", [b"x-api-key: wrong", b"Authorization: Bearer wrong"])
def test_bad_key_is_401_before_the_body(header: bytes) -> None:
    site, resource, _ = auth_site()
    channel, transport = connect(site)
    channel.dataReceived(HEAD + header + b"\r\nContent-Length: 3000\r\n\r\n")
    assert_error(transport.value(), 401, "authentication_error")
    assert resource.rendered == 0


def test_valid_key_gets_100_continue_and_is_served() -> None:
    site, resource, _ = auth_site()
    channel, transport = connect(site)
    channel.dataReceived(HEAD + b"x-api-key: " + KEY.encode()
                         + b"\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"hi")
    assert b"ok:hi" in transport.value()
    assert resource.rendered == 1


def test_header_checks_skip_requests_outside_the_pipeline() -> None:
    site, resource, _ = auth_site()
    channel, transport = connect(site)
    channel.dataReceived(b"GET /health HTTP/1.1\r\n\r\nGET /v1/nothing HTTP/1.1\r\n\r\n"
                         b"GET /v1/messages HTTP/1.1\r\n\r\n")
    assert transport.value().count(b"200 OK") == 3
    assert resource.rendered == 3


def test_a_failing_header_check_is_a_logged_500(logged_failures: list[dict[str, Any]]) -> None:
    class Broken:
        def check_headers(self, headers: Mapping[str, str]) -> RelayError | None:
            raise ValueError("bug")

    site, resource, _ = make_site(header_checks=(Broken(),))
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Content-Length: 0\r\n\r\n")
    assert_error(transport.value(), 500, "api_error")
    assert len(logged_failures) == 1
    assert resource.rendered == 0


@pytest.mark.parametrize(("method", "path"), [
    (b"POST", b"/v1/messages"), (b"POST", b"/v1/messages/"), (b"GET", b"/v1/messages"),
    (b"POST", b"/v1/messages/count_tokens"), (b"GET", b"/v1/models"),
    (b"HEAD", b"/v1/models/x"), (b"POST", b"/v1/models"), (b"GET", b"/v1/nothing"),
    (b"GET", b"/health"), (b"GET", b"/metrics"), (b"GET", b"/"), (b"POST", b"/v1"),
])
def test_reaches_pipeline_agrees_with_the_resource(method: bytes, path: bytes) -> None:
    op, _ = _route(method, path)
    pipeline_ops = ("messages", "count_tokens", "models.list", "models.get")
    assert reaches_pipeline(method, path) == (op in pipeline_ops)


# -- the buffer budget ------------------------------------------------------------------------

def test_uploads_past_the_budget_get_529_and_the_budget_is_released() -> None:
    site, _resource, _ = make_site(max_buffered_bytes=2 * LIMIT)
    parked = []
    for _ in range(2):
        channel, transport = connect(site)
        channel.dataReceived(POST + b"Content-Length: %d\r\n\r\nab" % LIMIT)
        assert transport.value() == b""
        parked.append((channel, transport))
    assert site.buffer_budget.used == 2 * LIMIT
    late, late_transport = connect(site)
    late.dataReceived(POST + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n")
    _, headers, _ = parse(late_transport.value())
    assert_error(late_transport.value(), 529, "overloaded_error")
    assert headers["retry-after"] == "1"
    chunked, chunked_transport = connect(site)
    chunked.dataReceived(POST + b"Transfer-Encoding: chunked\r\n\r\n")
    assert_error(chunked_transport.value(), 529, "overloaded_error")
    # A body without content needs no room.
    empty, empty_transport = connect(site)
    empty.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
    assert parse(empty_transport.value())[0] == 200

    channel, transport = parked[0]
    channel.dataReceived(b"x" * (LIMIT - 2))
    assert parse(transport.value())[0] == 200
    assert site.buffer_budget.used == LIMIT
    parked[1][0].connectionLost(Failure(ConnectionDone()))
    assert site.buffer_budget.used == 0


def test_chunked_uploads_reserve_what_they_receive() -> None:
    site, _, _ = make_site(max_buffered_bytes=LIMIT + LIMIT // 2)
    first, _ = connect(site)
    first.dataReceived(POST + b"Content-Length: %d\r\n\r\n" % LIMIT)
    second, transport = connect(site)
    second.dataReceived(POST + b"Transfer-Encoding: chunked\r\n\r\n")
    second.dataReceived(b"%x\r\n" % 1024 + b"x" * 1024 + b"\r\n")
    assert transport.value() == b""
    second.dataReceived(b"%x\r\n" % 1024 + b"x" * 1024 + b"\r\n")
    assert_error(transport.value(), 529, "overloaded_error")
    assert site.buffer_budget.used == LIMIT


# -- deadlines --------------------------------------------------------------------------------

def test_slowloris_connections_are_dropped_at_the_header_deadline() -> None:
    site, _, clock = make_site(header_timeout=10)
    conns = [connect(site) for _ in range(300)]
    for channel, _ in conns:
        channel.dataReceived(b"POST /v1/messages HTTP/1.1\r\n")
    for second in range(2, 10, 2):
        clock.advance(2)
        for channel, transport in conns:
            assert not transport.disconnecting, second
            channel.dataReceived(b"X-Slow-%d: 1\r\n" % second)
    clock.advance(2)
    for _, transport in conns:
        assert transport.disconnecting
        assert_error(transport.value(), 408, "timeout_error")


def test_a_silent_connection_is_closed_quietly_at_the_header_deadline() -> None:
    site, _, clock = make_site(header_timeout=10)
    _, transport = connect(site)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert transport.value() == b""


def test_the_header_deadline_restarts_for_each_keep_alive_request() -> None:
    site, resource, clock = make_site(header_timeout=10)
    channel, transport = connect(site)
    clock.advance(9)
    channel.dataReceived(b"GET /a HTTP/1.1\r\n\r\n")
    clock.advance(30)  # idle between requests: the keep-alive timeout applies, not ours
    assert not transport.disconnecting
    channel.dataReceived(b"GET /b HTTP/1.1\r\n")
    clock.advance(9)
    channel.dataReceived(b"\r\n")
    assert transport.value().count(b"200 OK") == 2
    assert resource.rendered == 2
    assert not transport.disconnecting


def test_a_slow_body_is_dropped_after_the_grace() -> None:
    site, resource, clock = make_site(min_body_rate=100, body_grace=5)
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Content-Length: 4000\r\n\r\n")
    # 50 bytes/s: at t s, 100 * (t - 5) bytes are due, which 50 * t meets until t = 10.
    for _ in range(8):
        channel.dataReceived(b"x" * 50)
        clock.advance(1)
    assert not transport.disconnecting
    for _ in range(3):
        channel.dataReceived(b"x" * 50)
        clock.advance(1)
    assert transport.disconnecting
    assert_error(transport.value(), 408, "timeout_error")
    assert site.buffer_budget.used == 0
    assert resource.rendered == 0


def test_a_body_at_the_minimum_rate_is_served_and_leaves_no_timer() -> None:
    site, resource, clock = make_site(min_body_rate=100, body_grace=5)
    channel, transport = connect(site)
    channel.dataReceived(POST + b"Content-Length: 1500\r\n\r\n")
    for _ in range(15):
        clock.advance(1)
        channel.dataReceived(b"x" * 100)
    assert parse(transport.value())[0] == 200
    assert resource.rendered == 1
    # Only the keep-alive idle timeout Twisted re-arms after a response is left.
    active = [c for c in clock.getDelayedCalls() if c.active()]
    assert len(active) == 1
    assert "timedOut" in active[0].func.__name__


def test_closing_mid_request_cancels_every_timer() -> None:
    site, _, clock = make_site()
    channel, _ = connect(site)
    channel.dataReceived(POST + b"Content-Length: 100\r\n\r\nab")
    channel.connectionLost(Failure(ConnectionDone()))
    assert [c for c in clock.getDelayedCalls() if c.active()] == []
    assert site.buffer_budget.used == 0


def test_a_client_that_never_reads_the_error_is_aborted() -> None:
    site, _, clock = make_site(header_timeout=10)
    channel, transport = connect(site)
    channel.dataReceived(b"GARBAGE\r\n\r\n")
    assert transport.disconnecting and not transport.disconnected
    clock.advance(10)
    assert transport.disconnected


# -- the private Twisted behaviour channel.py depends on ---------------------------------------

def test_twisted_private_contract() -> None:
    """If this fails, a Twisted upgrade changed what ``txrelay/server/channel.py`` relies on."""
    # 1. HTTPChannel's own framing errors go through _respondToBadRequestAndDisconnect.
    assert callable(getattr(http.HTTPChannel, "_respondToBadRequestAndDisconnect", None))
    calls: list[str] = []

    class Spy(http.HTTPChannel):
        def _respondToBadRequestAndDisconnect(self) -> None:
            calls.append("bad")
            self.transport.loseConnection()

    for bad in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost\r\n\r\n",
                POST + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"):
        spy = Spy()
        spy.makeConnection(StringTransport())
        spy.dataReceived(bad)
        assert calls == ["bad"], bad
        calls.clear()

    # 2. The chunked decoder sits in _transferDecoder and reports sizes as we expect.
    chan = http.HTTPChannel()
    chan.makeConnection(StringTransport())
    chan.dataReceived(POST + b"Transfer-Encoding: chunked\r\n\r\n")
    decoder = chan._transferDecoder
    assert isinstance(decoder, http._ChunkedTransferDecoder)
    assert callable(decoder.dataCallback) and callable(decoder.finishCallback)
    decoder.dataReceived(b"1f\r\n")
    assert (decoder.state, decoder.length) == ("BODY", 31)
    with pytest.raises(http._MalformedChunkedDataError):
        http._ChunkedTransferDecoder(lambda _: None, lambda _: None).dataReceived(b"zz\r\n")
    assert callable(getattr(http._ChunkedTransferDecoder, "_dataReceived_CHUNK_LENGTH", None))

    # 3. allHeadersReceived sends 100 Continue; nothing before it does.
    seen: list[bytes] = []

    class Watch(http.HTTPChannel):
        def allHeadersReceived(self) -> None:
            seen.append(self.transport.value())
            super().allHeadersReceived()
            seen.append(self.transport.value())

    watch = Watch()
    transport = StringTransport()
    watch.makeConnection(transport)
    watch.dataReceived(POST + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert seen == [b"", b"HTTP/1.1 100 Continue\r\n\r\n"]

    # 4. LineReceiver's re-entrancy: while _busyReceiving, dataReceived appends to _buffer
    # (after the line being handled); HTTPChannel.lineReceived takes one line at a time.
    lines: list[bytes] = []

    class Nested(http.HTTPChannel):
        def lineReceived(self, line: bytes) -> None:
            lines.append(line)
            if line.startswith(b"GET"):
                assert self._busyReceiving
                assert self._buffer == b"Host: x\r\n"
                self.dataReceived(b"X: y\r\n\r\n")
                assert self._buffer == b"Host: x\r\nX: y\r\n\r\n"
            super().lineReceived(line)

    nested = Nested()
    nested.makeConnection(StringTransport())
    nested.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert lines == [b"GET / HTTP/1.1", b"Host: x", b"X: y", b""]
    assert not nested._busyReceiving
    by_line = http.HTTPChannel()
    by_line.makeConnection(StringTransport())
    for line in (b"POST / HTTP/1.1", b"Content-Length: 3", b""):
        by_line.lineReceived(line)
    assert (by_line.length, by_line.line_mode) == (3, 0)
    assert by_line.requests[-1].requestHeaders.getRawHeaders(b"content-length") == [b"3"]
