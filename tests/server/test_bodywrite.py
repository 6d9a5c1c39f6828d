"""
txrelay.server.bodywrite against ``Request.write``: the same bytes on the wire and the same
request state, for every sequence of body writes, and no direct write where it is unsafe.
"""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.web import http, server
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import GzipEncoderFactory
from twisted.web.test.requesthelper import DummyRequest

from txrelay.server.bodywrite import direct_body, write_body
from txrelay.server.channel import FrontDoorChannel


class Held(Resource):
    """Keeps each request open (``NOT_DONE_YET``) for the test to write to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        self.requests.append(request)
        return server.NOT_DONE_YET


def open_request(channel_class: type[http.HTTPChannel] = FrontDoorChannel,
                 head: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 resource: Resource | None = None,
                 transport: Any = None, held: Held | None = None) -> tuple[Any, Any]:
    """A request held open on a fresh channel, and the channel's transport."""
    held = held or Held()
    site = server.Site(resource or held)
    channel = channel_class()
    channel.site = site
    channel.requestFactory = site.requestFactory  # type: ignore[attr-defined]
    channel.makeConnection(transport or StringTransport())
    channel.dataReceived(head)
    (request,) = held.requests
    return request, channel.transport


class Connection(tcp.Connection):
    """A TCP transport over an accepted socket, outside a reactor's port."""

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 2)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (the client end non-blocking)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    client.setblocking(False)
    return ours, client


def wire(transport: Any) -> bytes:
    return transport.value()  # type: ignore[no-any-return]


_CHANNELS = st.sampled_from([FrontDoorChannel, http.HTTPChannel])
_WRITES = st.lists(st.binary(max_size=300), max_size=12)


@settings(max_examples=200, deadline=None)
@given(_CHANNELS, st.binary(max_size=40), _WRITES)
def test_the_same_bytes_and_state_as_request_write(
        channel_class: type[http.HTTPChannel], first: bytes, writes: list[bytes]) -> None:
    """Through write_body or Request.write, a body reaches the wire byte for byte the same."""
    ours, ours_t = open_request(channel_class)
    theirs, theirs_t = open_request(channel_class)
    for request in (ours, theirs):
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(first)  # the response head (and the first frame, if any)
    head_ours, head_theirs = len(wire(ours_t)), len(wire(theirs_t))
    assert direct_body(ours)
    for data in writes:
        write_body(ours, data)
        theirs.write(data)
        assert ours.sentLength == theirs.sentLength
    ours.finish()
    theirs.finish()
    assert wire(ours_t)[head_ours:] == wire(theirs_t)[head_theirs:]
    assert wire(ours_t)[head_ours:].endswith(b"0\r\n\r\n")
    assert ours.sentLength == theirs.sentLength == len(first) + sum(map(len, writes))


def drain(peer: socket.socket) -> bytes:
    out = bytearray()
    for _ in range(200):
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            if out:
                break
            select.select([peer], [], [], 0.01)
            continue
        out += data
    return bytes(out)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=4000), min_size=1, max_size=8))
def test_the_same_bytes_on_a_tcp_socket(writes: list[bytes]) -> None:
    """On a real TCP transport (FrontDoorChannel's direct socket write) too."""
    framed = b"".join(b"%x\r\n%b\r\n" % (len(d), d) for d in writes)
    for write in (write_body, server.Request.write):
        a, b = tcp_pair()
        try:
            conn = Connection(a, None, MemoryReactor())  # type: ignore[arg-type]
            conn.connected = True
            request, _ = open_request(transport=conn)
            request.write(b"")
            conn.doWrite()
            assert drain(b).endswith(b"\r\n\r\n")  # the head
            out = bytearray()
            for data in writes:
                write(request, data)
                if conn.dataBuffer or conn._tempDataBuffer:
                    conn.doWrite()
                out += drain(b)
            assert bytes(out) == framed
        finally:
            a.close()
            b.close()


def test_not_before_the_head_is_sent() -> None:
    request, _ = open_request()
    assert not direct_body(request)
    request.write(b"x")
    assert direct_body(request)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",  # no chunked encoding before HTTP/1.1
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",  # nothing may be written at all
])
def test_not_without_a_chunked_body(head: bytes) -> None:
    request, _ = open_request(head=head)
    request.write(b"head")
    assert not direct_body(request)


def test_not_with_a_content_length() -> None:
    request, _ = open_request()
    request.setHeader(b"content-length", b"3")
    request.write(b"abc")
    assert not request.chunked and not direct_body(request)


def test_not_with_an_encoder() -> None:
    held = Held()
    request, _ = open_request(
        head=b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
        resource=EncodingResourceWrapper(held, [GzipEncoderFactory()]), held=held)
    request.write(b"abc")
    assert request._encoder is not None and not direct_body(request)


def test_not_for_a_request_class_with_its_own_write() -> None:
    class Counting(server.Request):
        def write(self, data: bytes) -> None:
            super().write(data)

    held = Held()
    site = server.Site(held)
    site.requestFactory = Counting
    channel = FrontDoorChannel()
    channel.site = site
    channel.requestFactory = Counting  # type: ignore[attr-defined]
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = held.requests
    request.write(b"abc")
    assert request.chunked and not direct_body(request)


def test_not_for_a_stand_in_request() -> None:
    """Whatever plays the request (twisted.web's DummyRequest in tests) is written to as usual."""
    request = DummyRequest([b"x"])
    request.write(b"abc")
    assert not direct_body(request)


def test_after_the_finish_the_same_error() -> None:
    request, _ = open_request()
    request.write(b"abc")
    request.finish()
    assert not direct_body(request)
    with pytest.raises(RuntimeError) as ours:
        write_body(request, b"x")
    with pytest.raises(RuntimeError) as theirs:
        request.write(b"x")
    assert str(ours.value) == str(theirs.value)


def test_after_the_client_left_nothing_is_written() -> None:
    request, transport = open_request()
    request.write(b"abc")
    sent = wire(transport)
    request.channel.connectionLost(None)
    assert not direct_body(request)
    write_body(request, b"more")
    assert wire(transport) == sent and request.sentLength == 3


def test_twisted_private_contract() -> None:
    """If this fails, a Twisted upgrade changed what ``bodywrite`` relies on."""
    request, transport = open_request()
    for name, value in (("startedWriting", 0), ("chunked", 0), ("finished", 0),
                        ("sentLength", 0), ("_disconnected", False), ("_inFakeHead", False),
                        ("_encoder", None), ("method", b"GET")):
        assert getattr(request, name) == value, name
    # A chunked write: toChunk's framing through channel.writeSequence.
    calls: list[Any] = []
    channel = request.channel
    channel.writeSequence = lambda seq: calls.append(("seq", list(seq)))
    request.write(b"")
    assert request.startedWriting and request.chunked and calls == []
    request.write(b"abc")
    assert calls == [("seq", [b"3", b"\r\n", b"abc", b"\r\n"])]
    assert http.toChunk(b"x" * 26) == (b"1a", b"\r\n", b"x" * 26, b"\r\n")
    del channel.writeSequence
    # HTTPChannel's write and writeSequence go to the transport as they are.
    before = wire(transport)
    http.HTTPChannel.write(channel, b"ab")
    http.HTTPChannel.writeSequence(channel, [b"c", b"d"])
    assert wire(transport) == before + b"abcd"
    # A HEAD answered by rendering GET (_inFakeHead), a lost connection (_disconnected).
    assert "_inFakeHead" in vars(server.Request) and "_encoder" in vars(server.Request)
    request.channel.connectionLost(None)
    assert request._disconnected is True and request.channel is None
