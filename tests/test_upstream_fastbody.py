"""
txrelay.upstream.fastbody against Twisted's own client: the same body bytes, callbacks,
errors, backpressure and connection reuse, for every way a response can be split.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web._newclient import (
    BODY,
    HTTP11ClientProtocol,
    HTTPClientParser,
    Request,
    Response,
    TransportProxyProducer,
)
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http import _ChunkedTransferDecoder
from twisted.web.http_headers import Headers

from txrelay.upstream.fastbody import LeanChunkedDecoder, LeanClientFactory, LeanClientProtocol
from txrelay.upstream.http import _Pool

# -- the decoder alone ------------------------------------------------------------------


def decode(cls: type[_ChunkedTransferDecoder], reads: list[bytes]) -> list[Any]:
    """Everything ``cls`` tells its callbacks for ``reads``, then its error if any."""
    events: list[Any] = []
    decoder = cls(lambda data: events.append(("data", bytes(data))),
                  lambda rest: events.append(("end", bytes(rest))))
    try:
        for read in reads:
            decoder.dataReceived(read)
        decoder.noMoreData()
    except Exception as e:
        events.append(("error", type(e), str(e)))
    return events


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in pairwise(points)] or [body]


def same(reads: list[bytes]) -> list[Any]:
    ours = decode(LeanChunkedDecoder, reads)
    assert ours == decode(_ChunkedTransferDecoder, reads)
    return ours


_EXT = st.sampled_from([b"", b";a=b", b";x", b';n="v w"'])
_CHUNK = st.tuples(st.binary(min_size=1, max_size=40), _EXT,
                   st.sampled_from(["x", "X", "0x"]))


@st.composite
def chunked(draw: Any) -> bytes:
    """A chunked body: data chunks, the last chunk, trailers, maybe bytes after it."""
    out = b""
    for data, ext, case in draw(st.lists(_CHUNK, max_size=6)):
        size = format(len(data), case[-1]).encode()
        out += (b"0" + size if case == "0x" else size) + ext + b"\r\n" + data + b"\r\n"
    trailers = draw(st.lists(st.sampled_from([b"x-a: 1", b"Checksum: abc"]), max_size=2))
    out += b"0" + draw(_EXT) + b"\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    return out + draw(st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n"]))


@st.composite
def damaged(draw: Any) -> bytes:
    """A chunked body with a byte replaced, inserted or removed somewhere."""
    body: bytes = draw(chunked())
    at = draw(st.integers(0, len(body)))
    byte = draw(st.sampled_from([b"\r", b"\n", b";", b"g", b" ", b"0", b"-", b"+", b"\x00",
                                 b";\x01"]))
    how = draw(st.sampled_from(["replace", "insert", "delete"]))
    if how == "replace":
        return body[:at] + byte + body[at + 1:]
    if how == "insert":
        return body[:at] + byte + body[at:]
    return body[:at] + body[at + 1:]


@settings(max_examples=400, deadline=None)
@given(body=chunked(), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_of_a_chunked_body_decodes_as_twisted_does(body: bytes,
                                                             cuts: list[int]) -> None:
    events = same(split(body, cuts))
    # (bytes after the last chunk in a later read fail both: the parser is done by then)
    assert next(e[0] for e in events if e[0] != "data") == "end"


@settings(max_examples=400, deadline=None)
@given(body=damaged(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_a_damaged_body_fails_as_twisted_fails(body: bytes, cuts: list[int]) -> None:
    same(split(body, cuts))


def test_every_boundary_of_a_stream() -> None:
    body = (b"6\r\ndata: \r\n1;ext=1\r\nA\r\n1a\r\n" + b"z" * 26 + b"\r\n"
            b"4\r\n\r\n\r\n\r\n0\r\nx-t: 1\r\n\r\n")
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            events = same([body[:i], body[i:j], body[j:]])
            assert b"".join(e[1] for e in events if e[0] == "data") == \
                b"data: A" + b"z" * 26 + b"\r\n\r\n"


@pytest.mark.parametrize("body", [
    b"0x5\r\nhello\r\n0\r\n\r\n", b"+5\r\nhello\r\n", b"-5\r\nhello\r\n", b" 5\r\nhello\r\n",
    b"5 \r\nhello\r\n", b"g\r\nhello\r\n", b"\r\nhello\r\n", b"5\r\nhelloXY0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\nmore", b"1" * 1100 + b"\r\n", b"0" * 1030 + b"5\r\nhello\r\n",
    b"5;\x00\r\nhello\r\n", b"0000000000000005\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffff\r\nhello", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r",
])
def test_bad_or_cut_sizes_give_twisteds_errors(body: bytes) -> None:
    events = same([body])
    # The complete ones end; every other one ends in an error, never silently.
    assert events[-1][0] in ("end", "error")


def test_whole_chunks_skip_the_state_machine() -> None:
    got: list[bytes] = []
    decoder = LeanChunkedDecoder(got.append, lambda rest: None)

    def refuse() -> bool:
        raise AssertionError("the state machine ran")

    decoder._dataReceived_CHUNK_LENGTH = refuse  # type: ignore[method-assign]
    decoder.dataReceived(b"5\r\nhello\r\n1\r\n!\r\n")
    decoder.dataReceived(b"b\r\n" + b"x" * 11 + b"\r\n")
    assert got == [b"hello", b"!", b"x" * 11] and decoder.state == "CHUNK_LENGTH"


# -- the protocol, in memory ------------------------------------------------------------


class Body(Protocol):
    """Records what a response body delivers."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


class Conn:
    """One client connection over a ``StringTransport``."""

    def __init__(self, cls: type[HTTP11ClientProtocol]) -> None:
        self.quiescent: list[Any] = []
        self.protocol = cls(self.quiescent.append)  # type: ignore[no-untyped-call]
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def request(self) -> tuple[list[Any], Body]:
        body = Body()
        results: list[Any] = []
        request = Request(b"POST", b"/v1/x", Headers({b"host": [b"up"]}), None,
                          persistent=True)  # type: ignore[no-untyped-call]
        d = self.protocol.request(request)

        def got(response: Any) -> None:
            results.append(response)
            response.deliverBody(body)

        d.addCallbacks(got, results.append)
        return results, body


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = b"".join(b"%x\r\n%s\r\n" % (len(e), e)
                  for e in (b"data: {\"a\":1}\n\n", b"data: {\"b\":22}\n\n", b"data: [DONE]\n\n"))


def outcome(cls: type[HTTP11ClientProtocol], reads: list[bytes]) -> tuple[Any, ...]:
    conn = Conn(cls)
    results, body = conn.request()
    for read in reads:
        conn.protocol.dataReceived(read)
    reason = body.reason
    return (b"".join(body.data), None if reason is None else type(reason.value),
            None if reason is None else [type(r.value) for r in
                                         getattr(reason.value, "reasons", [])],
            len(conn.quiescent), conn.transport.disconnecting,
            [type(r).__name__ for r in results])


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(chunked(), damaged()), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_a_response_split_anywhere_ends_as_with_twisteds_protocol(body: bytes,
                                                                  cuts: list[int]) -> None:
    reads = split(HEAD + body, cuts)
    assert outcome(LeanClientProtocol, reads) == outcome(HTTP11ClientProtocol, reads)


def test_body_reads_take_the_lean_path_and_the_connection_is_reused() -> None:
    conn = Conn(LeanClientProtocol)
    for _ in range(2):  # the second request on the same connection, after a full body
        _, body = conn.request()
        conn.protocol.dataReceived(HEAD)
        parser: Any = conn.protocol._parser
        assert isinstance(parser.bodyDecoder, LeanChunkedDecoder) and parser.state == BODY
        conn.protocol.dataReceived(EVENTS)
        assert body.data == [b"data: {\"a\":1}\n\n", b"data: {\"b\":22}\n\n",
                             b"data: [DONE]\n\n"]
        assert conn.quiescent == [] and body.reason is None
        conn.protocol.dataReceived(b"0\r\n\r\n")
        assert conn.quiescent == [conn.protocol] and body.reason is not None
        assert body.reason.check(_newclient.ResponseDone)
        assert not conn.transport.disconnecting and conn.protocol._state == "QUIESCENT"
        conn.quiescent.clear()


def test_pause_resume_and_stop_reach_the_upstream_transport() -> None:
    conn = Conn(LeanClientProtocol)
    _, body = conn.request()
    conn.protocol.dataReceived(HEAD)
    assert conn.transport.producerState == "producing"  # resumed by deliverBody
    assert body.transport is not None
    body.transport.pauseProducing()  # type: ignore[attr-defined]
    assert conn.transport.producerState == "paused"
    conn.protocol.dataReceived(b"5\r\nhello\r\n")  # already in flight: still delivered
    assert body.data == [b"hello"]
    body.transport.resumeProducing()  # type: ignore[attr-defined]
    assert conn.transport.producerState == "producing"
    body.transport.stopProducing()  # type: ignore[attr-defined]
    assert conn.transport.producerState == "stopped"


def test_a_malformed_chunk_fails_the_body_and_closes_the_connection() -> None:
    conn = Conn(LeanClientProtocol)
    _, body = conn.request()
    conn.protocol.dataReceived(HEAD + b"5\r\nhello\r\nzz\r\n")
    assert body.data == [b"hello"] and conn.transport.disconnecting
    assert body.reason is not None and body.reason.check(_newclient.ResponseFailed)
    assert conn.quiescent == []


def test_the_pool_builds_lean_protocols() -> None:
    assert _Pool._factory is LeanClientFactory
    factory = LeanClientFactory(lambda p: None, "meta")  # type: ignore[no-untyped-call]
    assert isinstance(factory.buildProtocol(None), LeanClientProtocol)


def test_twisted_private_contract() -> None:
    """If this fails, a Twisted upgrade changed what ``fastbody`` relies on."""
    # The pool's protocol factory, and the factory's quiescent callback.
    assert HTTPConnectionPool._factory is _HTTP11ClientFactory
    factory: Any = _HTTP11ClientFactory(print, "meta")  # type: ignore[no-untyped-call]
    assert factory._quiescentCallback is print
    assert type(factory.buildProtocol(None)) is HTTP11ClientProtocol
    # The parser: its decoder table, its state, LineReceiver's raw-mode bookkeeping.
    assert HTTPClientParser._transferDecoders == {b"chunked": _ChunkedTransferDecoder}
    assert BODY == "BODY"
    conn = Conn(HTTP11ClientProtocol)
    conn.request()
    parser: Any = conn.protocol._parser
    assert isinstance(parser, HTTPClientParser)
    assert parser._busyReceiving is False and parser._buffer == b""
    assert callable(conn.protocol._giveUp)
    conn.protocol.dataReceived(HEAD)
    assert parser.state == BODY and type(parser.bodyDecoder) is _ChunkedTransferDecoder
    assert not parser.line_mode and parser._buffer == b""
    # The decoder: its states, buffer and callbacks; the response's state and protocol.
    decoder = parser.bodyDecoder
    assert decoder.state == "CHUNK_LENGTH" and decoder._buffer == bytearray()
    response = decoder.dataCallback.__self__
    assert isinstance(response, Response) and decoder.dataCallback == response._bodyDataReceived
    assert response._state == "CONNECTED" and isinstance(response._bodyProtocol, Body)
    assert isinstance(response._transport, TransportProxyProducer)
    for state in ("CHUNK_LENGTH", "CRLF", "TRAILER", "BODY", "FINISHED"):
        assert callable(getattr(decoder, "_dataReceived_" + state))
    decoder.dataReceived(b"5\r\nhel")
    assert decoder.state == "BODY" and decoder.length == 2 and decoder._buffer == bytearray()
    decoder.dataReceived(b"lo\r")
    assert decoder.state == "CRLF" and decoder._buffer == bytearray(b"\r")


def test_cancelling_the_request_drops_the_upstream_connection() -> None:
    """A client that left cancels the request: the connection is aborted, never pooled."""
    conn = Conn(LeanClientProtocol)
    request = Request(b"POST", b"/v1/x", Headers({b"host": [b"up"]}), None,
                      persistent=True)  # type: ignore[no-untyped-call]
    d = conn.protocol.request(request)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures and failures[0].check(_newclient.ResponseNeverReceived)
    assert conn.transport.disconnecting and conn.quiescent == []
