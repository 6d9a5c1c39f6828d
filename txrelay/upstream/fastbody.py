# -*- test-case-name: tests.test_upstream_fastbody -*-
"""
A leaner path for upstream response bodies, behind Agent's interfaces.

Twisted's HTTP/1.1 client hands every read of a response body through five Python frames
before our body protocol sees it (``HTTP11ClientProtocol.dataReceived``, the parser's
``dataReceived``, ``LineReceiver``'s raw mode, ``_ChunkedTransferDecoder``'s state machine
with its ``bytearray`` buffer, and ``Response``'s stateful dispatcher). A paced stream pays
that once per token. This module keeps Twisted's classes and only shortcuts the common case:

* :class:`LeanChunkedDecoder` is Twisted's chunked decoder, with a fast path for reads that
  hold whole chunks (``<hex size>CRLF<data>CRLF``, no extension): it slices them out of the
  read directly. Anything else (a partial chunk, an extension, the last chunk and trailers,
  a malformed size) goes to Twisted's own state machine from that point, so what the body
  protocol receives, and the errors, are exactly Twisted's.
* :class:`LeanClientProtocol` installs that decoder for its responses and, once a response
  is in its body, hands reads straight to the decoder (what ``LineReceiver`` does in raw mode
  with nothing buffered).

:class:`LeanClientFactory` is the pool's protocol factory (``HTTPConnectionPool._factory``).
The private Twisted attributes relied on are checked by tests.upstream.test_fastbody
(``test_twisted_private_contract``), on the Twisted floor too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure
from twisted.web._newclient import BODY, HTTP11ClientProtocol, Response
from twisted.web.client import _HTTP11ClientFactory
from twisted.web.http import _ChunkedTransferDecoder

#: A chunk-size line without extension is 1 to 15 of these and CRLF. Longer sizes (or
#: leading zeros past 15 digits) take Twisted's path, which also enforces its line-length
#: limit.
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class LeanChunkedDecoder(_ChunkedTransferDecoder):
    """Twisted's chunked decoder, slicing whole chunks out of a read without buffering."""

    def __init__(self, dataCallback: Callable[[bytes], None],
                 finishCallback: Callable[[bytes], None]) -> None:
        super().__init__(dataCallback, finishCallback)
        owner = getattr(dataCallback, "__self__", None)
        # Response._bodyDataReceived dispatches on the response's state per call; while a
        # body protocol is connected that is a call of its dataReceived, made here directly.
        self._response: Any = owner if isinstance(owner, Response) else None

    def dataReceived(self, data: bytes) -> None:
        """Deliver the whole chunks at the start of ``data``; the rest the Twisted way."""
        if self._buffer or self.state != "CHUNK_LENGTH":
            super().dataReceived(data)
            return
        find = data.find
        response = self._response
        pos = 0
        end = len(data)
        while pos < end:
            eol = find(b"\r\n", pos, pos + 17)
            size = data[pos:eol]
            # 1 to 15 hex digits and nothing else (int() would take "0x", "_", signs, spaces)
            if eol < 0 or not size or size.strip(_HEX_DIGITS):
                break
            start = eol + 2
            stop = start + int(size, 16)
            if stop == start or data[stop:stop + 2] != b"\r\n":
                break  # the last chunk, or a chunk that ends in a later read
            pos = stop + 2
            if response is not None and response._state == "CONNECTED":
                response._bodyProtocol.dataReceived(data[start:stop])
            else:
                self.dataCallback(data[start:stop])
        if pos < end:
            super().dataReceived(data[pos:] if pos else data)


#: The parser's transfer decoders, for :class:`LeanClientProtocol`'s responses.
_DECODERS: dict[bytes, type[_ChunkedTransferDecoder]] = {b"chunked": LeanChunkedDecoder}


class LeanClientProtocol(HTTP11ClientProtocol):
    """An ``HTTP11ClientProtocol`` whose responses use :class:`LeanChunkedDecoder`."""

    def request(self, request: Any) -> Any:
        """Issue ``request`` (see ``HTTP11ClientProtocol.request``)."""
        d = super().request(request)
        parser = self._parser
        if parser is not None:
            parser._transferDecoders = _DECODERS
        return d

    def dataReceived(self, data: bytes) -> None:
        """
        A read of a response body goes straight to its decoder, as the parser would pass it
        (raw mode, nothing buffered); anything else goes through the parser.
        """
        parser: Any = self._parser
        if (parser is None or parser.state != BODY or parser._busyReceiving
                or parser._buffer):
            super().dataReceived(data)  # type: ignore[no-untyped-call]
            return
        try:
            parser.bodyDecoder.dataReceived(data)
        except BaseException:
            self._giveUp(Failure())  # type: ignore[no-untyped-call]


class LeanClientFactory(_HTTP11ClientFactory):
    """The pool's protocol factory, building :class:`LeanClientProtocol`."""

    def buildProtocol(self, addr: Any) -> LeanClientProtocol:
        """A protocol returning to the pool through the quiescent callback."""
        return LeanClientProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]
