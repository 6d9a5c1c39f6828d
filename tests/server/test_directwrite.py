"""Writing at once to a TCP socket with nothing queued (txrelay.server.directwrite)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from zope.interface import implementer

from txrelay.server.directwrite import write_now


@implementer(IPushProducer)
class Producer:
    """Records what the transport asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class Pair:
    """A Twisted TCP transport over one end of a socket pair, on a memory reactor."""

    def __init__(self, sndbuf: int | None = None) -> None:
        a, b = socket.socketpair()
        if sndbuf is not None:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        b.setblocking(False)
        self.peer = b
        self.reactor = MemoryReactor()
        self.transport = tcp.Connection(a, Protocol(), self.reactor)
        self.transport.connected = True

    def registered(self) -> bool:
        return self.transport in self.reactor.getWriters()

    def received(self) -> bytes:
        out = bytearray()
        while True:
            try:
                data = self.peer.recv(1 << 20)
            except BlockingIOError:
                return bytes(out)
            if not data:
                return bytes(out)
            out += data

    def flush(self) -> bytes:
        """Let the reactor write what is buffered, reading the peer as it goes."""
        got = bytearray(self.received())
        while self.registered():
            self.transport.doWrite()
            got += self.received()
        return bytes(got)

    def close(self) -> None:
        self.transport.socket.close()
        self.peer.close()


@pytest.fixture()
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def test_sends_at_once_without_registering_for_writing(pair: Pair) -> None:
    assert write_now(pair.transport, [b"3\r\n", b"abc", b"\r\n"])
    assert not pair.registered()
    assert pair.received() == b"3\r\nabc\r\n"


def test_bytes_written_earlier_leave_first_in_the_same_send(pair: Pair) -> None:
    # what HTTPChannel.writeHeaders does before the first body write
    pair.transport.writeSequence([b"HTTP/1.1 200 OK\r\n", b"\r\n"])
    assert pair.registered()
    assert write_now(pair.transport, [b"body"])
    assert pair.received() == b"HTTP/1.1 200 OK\r\n\r\nbody"
    assert not pair.registered()
    assert pair.transport._tempDataBuffer == [] and pair.transport._tempDataLen == 0


def test_with_no_new_bytes_it_flushes_what_was_written(pair: Pair) -> None:
    # what the upstream client does after Agent wrote a request on a reused connection
    pair.transport.writeSequence([b"POST / HTTP/1.1\r\n\r\n", b"{}"])
    assert write_now(pair.transport, ())
    assert pair.received() == b"POST / HTTP/1.1\r\n\r\n{}"
    assert not pair.registered()
    assert write_now(pair.transport, ())  # nothing at all: nothing happens
    assert pair.received() == b"" and not pair.registered()


def test_declines_while_an_earlier_send_is_unfinished(pair: Pair) -> None:
    pair.transport.dataBuffer, pair.transport.offset = b"unsent", 2
    assert not write_now(pair.transport, [b"x"])
    assert pair.received() == b""


@pytest.mark.parametrize("state", ["disconnecting", "_writeDisconnecting",
                                   "_writeDisconnected", "TLS"])
def test_declines_a_closing_or_tls_connection(pair: Pair, state: str) -> None:
    setattr(pair.transport, state, True)
    assert not write_now(pair.transport, [b"x"])
    assert pair.received() == b""


def test_declines_what_is_not_a_tcp_connection() -> None:
    t = StringTransport()
    assert not write_now(t, [b"x"])
    assert t.value() == b""


def test_declines_a_closed_connection(pair: Pair) -> None:
    pair.transport.connected = False
    assert not write_now(pair.transport, [b"x"])


def test_a_broken_connection_is_left_to_the_transport(pair: Pair) -> None:
    pair.peer.close()
    # The first send after the peer closed may still succeed; a later one fails.
    results = [write_now(pair.transport, [b"x" * 1000]) for _ in range(5)]
    assert results[-1] is False


def test_what_the_kernel_does_not_take_is_buffered_and_pauses_the_producer() -> None:
    p = Pair(sndbuf=4096)
    try:
        producer = Producer()
        p.transport.registerProducer(producer, True)
        big = bytes(range(256)) * 2048  # 512 KiB: more than the socket and bufferSize take
        assert write_now(p.transport, [big])
        assert p.registered()
        assert producer.calls == ["pause"]
        # While bytes are queued, the next write goes the usual way, after them.
        assert not write_now(p.transport, [b"tail"])
        p.transport.write(b"tail")
        assert p.flush() == big + b"tail"
        # (Twisted's own write pauses again while the buffer is still full.)
        assert producer.calls == ["pause", "pause", "resume"]
    finally:
        p.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["now", "buffered", "drain"]),
                          st.binary(min_size=0, max_size=20000)), max_size=30))
def test_bytes_arrive_complete_and_in_order(ops: list[tuple[str, bytes]]) -> None:
    p = Pair(sndbuf=8192)
    try:
        want = bytearray()
        got = bytearray()
        for op, data in ops:
            if op == "drain":
                got += p.flush()
                continue
            want += data
            if op == "buffered" or not write_now(p.transport, [data[:7], data[7:]]):
                p.transport.writeSequence([data])
            got += p.received()
        got += p.flush()
        assert bytes(got) == bytes(want)
    finally:
        p.close()


def test_twisted_private_contract(pair: Pair) -> None:
    """If this fails, a Twisted upgrade changed what ``directwrite`` relies on."""
    t: Any = pair.transport
    for name in ("socket", "connected", "disconnecting", "_writeDisconnecting",
                 "_writeDisconnected", "TLS", "dataBuffer", "offset", "_tempDataBuffer",
                 "_tempDataLen", "producerPaused", "_maybePauseProducer", "startWriting",
                 "stopWriting"):
        assert hasattr(t, name), name
    assert t.TLS is False and t.dataBuffer == b"" and t.offset == 0
    # write() queues in _tempDataBuffer and registers; doWrite() moves it to dataBuffer.
    t.write(b"abc")
    assert t._tempDataBuffer == [b"abc"] and t._tempDataLen == 3 and pair.registered()
    t.doWrite()
    assert pair.received() == b"abc"
    assert t.dataBuffer == b"" and t.offset == 0 and not pair.registered()
    assert issubclass(tcp.Server, tcp.Connection)
    assert issubclass(tcp.Connection, abstract.FileDescriptor)

