# -*- test-case-name: tests.server.test_channel -*-
"""
The relay's HTTP/1.1 connection: Twisted's :class:`~twisted.web.http.HTTPChannel` with a
front door that answers every malformed, oversized, unauthenticated or too-slow request at
once, in Anthropic's shape with a ``request-id``, and then closes the connection without
reading the rest.

What it adds to ``HTTPChannel`` (the limits come from :class:`FrontDoorPolicy`):

- 400 for anything HTTP's framing rules reject (bad request line, non-ASCII or control bytes
  in it, bare-LF line endings — rejected, not accepted, since a proxy in front of us may split
  lines differently —, a ``Content-Length`` or chunk size past 2**63-1, invalid chunk framing,
  conflicting ``Content-Length``/``Transfer-Encoding``), 414 for a request line and 431 for
  headers over ``max_head_bytes``;
- at the end of the headers, before ``100 Continue`` and before any body byte is read: 413 for
  a declared length over ``max_request_bytes``, the header checks (401 from ``auth``), 529 when
  the relay-wide :class:`BufferBudget` cannot take the body;
- while the body arrives: 413 as soon as the received or announced (chunk size) length passes
  the limit, 529 when a chunked body outgrows the budget;
- deadlines: the request head must be complete ``header_timeout`` seconds after its first byte
  (after the connection opens, for the first request), and the body must average
  ``min_body_rate`` bytes/s once ``body_grace`` seconds have passed; both answer 408.

Twisted has no public hook for any of this, so it depends on these private behaviours of
``twisted.web.http`` (checked by ``tests/server/test_channel.py::test_twisted_private_contract``,
which fails loudly when an upgrade changes them):

1. every framing error ``HTTPChannel`` detects itself ends in a call to
   ``self._respondToBadRequestAndDisconnect()``, which we override to answer our 400;
2. ``self._transferDecoder`` holds the body decoder once a ``Transfer-Encoding: chunked``
   header is parsed, and is a ``_ChunkedTransferDecoder`` whose ``_dataReceived_CHUNK_LENGTH``
   step sets ``self.length`` and ``self.state == "BODY"`` after reading a chunk-size line, and
   which raises ``_MalformedChunkedDataError`` for framing errors; we replace it by a subclass
   that reports each chunk size;
3. ``allHeadersReceived`` is where ``HTTPChannel`` sends ``100 Continue`` and creates the body
   buffer (``gotLength``), and it is called before any body byte reaches the decoder: answering
   without calling it is what makes our answers early;
4. the one-read head (below) drives ``LineReceiver`` by hand: ``_busyReceiving`` makes a
   nested ``dataReceived`` append to ``_buffer`` (what is left after the line being
   handled), and ``HTTPChannel.lineReceived`` takes one line at a time, the empty line
   ending the head.

A request head that arrives whole in one read (the usual case) is checked in bulk: one
search for its end, one count of control bytes, then ``HTTPChannel.lineReceived`` line by
line — the state Twisted builds is its own —, without ``LineReceiver``'s per-line split of the
whole buffer (for an 83 KB body in the first read, a copy of the body per header line) and
without this class's per-line checks, which the bulk checks stand for. Anything else (a
partial head, an empty line before the request line, obsolete line folding, a bare CR or LF,
control bytes, a head over the limits, a non-persistent channel, a nested call) takes the
line-by-line path from its first byte, so every answer above is the same on both paths
(``tests/server/test_head_fastpath.py``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder, _MalformedChunkedDataError

from txrelay.logs import RelayLogger
from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.ids import request_id
from txrelay.server.directwrite import write_now
from txrelay.server.frontdoor import (
    MAX_FRAMING_LENGTH,
    BufferBudget,
    FrontDoorPolicy,
    error_response,
    malformed,
    operation_of,
    overloaded,
    too_large,
    too_slow,
)

if TYPE_CHECKING:
    from collections.abc import Callable

log = RelayLogger()

_DEFAULT_POLICY = FrontDoorPolicy()
_CONTROL = bytes(range(0x20)) + b"\x7f"
_FIELD_CONTROL = _CONTROL.replace(b"\t", b"")


class _ReportingChunkedDecoder(_ChunkedTransferDecoder):
    """Twisted's chunked decoder, reporting each chunk size before its data is read."""

    def __init__(self, original: _ChunkedTransferDecoder,
                 on_size: Callable[[int], None]) -> None:
        super().__init__(original.dataCallback, original.finishCallback)
        self._on_size = on_size

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done = super()._dataReceived_CHUNK_LENGTH()
        if done and self.state == "BODY":
            self._on_size(self.length)
        return done


#: Header names as :func:`_headers` gives them (a few dozen in practice; bounded).
_NAMES: dict[bytes, str] = {}


def _headers(raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    names = _NAMES
    for name, values in raw.getAllRawHeaders():
        key = names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(names) < 512:
                names[name] = key
        out[key] = (values[0].decode("latin-1") if len(values) == 1
                    else ", ".join(v.decode("latin-1") for v in values))
    return out


class FrontDoorChannel(HTTPChannel):
    """An :class:`HTTPChannel` that enforces the site's :class:`FrontDoorPolicy`."""

    site: Any
    # What the connection is doing: "head" (reading a request head), "body", "busy" (the
    # resource has the request), "idle" (keep-alive, between requests), "rejected".
    _phase = "head"
    _head_bytes = 0
    _head_received = 0
    _seen_request_line = False
    _method = b""
    _target = b""
    _lf_tail = b""
    _reserved = 0
    _chunked = False
    _body_received = 0
    _body_started = 0.0
    _head_timer: IDelayedCall | None = None
    _body_timer: IDelayedCall | None = None
    _abort_timer: IDelayedCall | None = None

    # -- configuration -------------------------------------------------------------------

    @property
    def policy(self) -> FrontDoorPolicy:
        """The site's policy (defaults when the site has none)."""
        return getattr(self.site, "front_door", None) or _DEFAULT_POLICY

    @property
    def budget(self) -> BufferBudget | None:
        """The site's shared buffer budget, if it has one."""
        return getattr(self.site, "buffer_budget", None)

    def _now(self) -> float:
        return float(self.site.reactor.seconds())

    # -- connection lifecycle --------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        # Replies are written as they are ready (streamed frames, head and body together):
        # Nagle's algorithm would hold a frame back until the client ACKs the previous one.
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            with contextlib.suppress(OSError):
                set_nodelay(True)
        self.MAX_LENGTH = self.totalHeadersSize = self.policy.max_head_bytes
        self._start_head()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._release()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    # -- writing: at once when the socket has nothing queued (txrelay.server.directwrite) ----

    def write(self, data: bytes) -> None:
        if not write_now(self.transport, (data,)):
            super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, iovec: list[bytes]) -> None:
        if not write_now(self.transport, iovec):
            super().writeSequence(iovec)  # type: ignore[no-untyped-call]

    #: Whether a head that arrives in one read takes :meth:`_one_read_head` (tests compare).
    fast_head = True

    def dataReceived(self, data: bytes) -> None:
        if self._phase == "rejected":
            return
        if self._phase == "idle":
            self._start_head()
        if self._phase == "head":
            self._head_received += len(data)
            # Only a head none of whose bytes came before: not even as lines the loop took
            # from a previous read while the connection was idle (pipelining).
            if (self._head_received == len(data) and self._head_bytes == 0 and self.fast_head
                    and self.line_mode and not self._busyReceiving and not self._buffer
                    and not self.paused and self.persistent and self._one_read_head(data)):
                return
        if self.line_mode and self._phase == "head" and self._has_bare_lf(data):
            self.reject(malformed("lines must end with CRLF, not a bare LF"))
            return
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _one_read_head(self, data: bytes) -> bool:
        """
        Handle ``data`` when it starts with a whole, plain request head; whether it did
        (else nothing changed and the line-by-line path takes ``data``).
        """
        end = data.find(b"\r\n\r\n")
        if end <= 0 or end + 4 > self.policy.max_head_bytes or end + 2 > self.MAX_LENGTH:
            return False
        head = data[:end]
        lines = head.split(b"\r\n")
        breaks = len(lines) - 1
        # The only control bytes are the CRLFs between lines, and HTAB inside header lines.
        if len(head.translate(None, _FIELD_CONTROL)) != len(head) - 2 * breaks:
            return False
        first = lines[0]
        if not first or not first.isascii() or b"\t" in first:
            return False
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t", b""):  # obsolete line folding
                return False
        # What lineReceived would have recorded, line by line.
        self._seen_request_line = True
        parts = first.split(b" ")
        if len(parts) == 3:
            self._method, self._target = parts[0], parts[1]
        self._lf_tail = b""
        self.resetTimeout()  # type: ignore[no-untyped-call]
        # As LineReceiver.dataReceived: a nested call appends to _buffer, handled after.
        self._busyReceiving = True
        self._buffer = data[end + 4:]
        try:
            lines.append(b"")
            pos = 0
            for line in lines:
                pos += len(line) + 2
                self._head_bytes = pos
                HTTPChannel.lineReceived(self, line)
                if self._phase == "rejected" or getattr(self.transport, "disconnecting", False):
                    if pos < end + 4:  # stopped inside the head: the rest stays unread
                        self._buffer = data[pos:]
                    return True
        finally:
            self._busyReceiving = False
        rest, self._buffer = self._buffer, b""
        if rest:
            LineReceiver.dataReceived(self, rest)
        return True

    def lineReceived(self, line: bytes) -> None:
        if self._phase == "rejected":
            return
        self._head_bytes += len(line) + 2
        if self._head_bytes > self.policy.max_head_bytes:
            self._reject_long_head(not self._seen_request_line)
            return
        if not self._seen_request_line and line != b"":
            self._seen_request_line = True
            if not line.isascii() or len(line.translate(None, _CONTROL)) != len(line):
                self.reject(malformed("the request line must be printable ASCII"))
                return
            parts = line.split(b" ")
            if len(parts) == 3:
                self._method, self._target = parts[0], parts[1]
        elif line and len(line.translate(None, _FIELD_CONTROL)) != len(line):
            # RFC 9110 §5.5: a field value has no control characters but HTAB. Older Twisted
            # releases let a lone CR or a NUL through into the header value.
            self.reject(malformed("header lines must not contain control characters"))
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reject_long_head(not self._seen_request_line)

    def allHeadersReceived(self) -> None:
        if self._phase == "rejected":
            return
        self._cancel(self._head_timer)
        self._head_timer = None
        error = self._check_head()
        if error is not None:
            self.reject(error)
            return
        super().allHeadersReceived()  # type: ignore[no-untyped-call]
        if self.length != 0:
            self._phase = "body"
            self._body_started = self._now()
            self._schedule_body_check()

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase != "rejected":
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._phase == "rejected":
            return
        self._cancel(self._body_timer)
        self._body_timer = None
        self._phase = "busy"
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: Any) -> None:
        self._release()
        self._phase = "idle"
        self._head_bytes = self._head_received = 0
        self._seen_request_line = False
        self._method = self._target = b""
        self._lf_tail = b""
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own framing checks end here (private hook 1 of the module docstring).
        self.reject(malformed("invalid request line, header or body framing"))

    # -- the body ------------------------------------------------------------------------

    def accept_body(self, size: int) -> bool:
        """Account ``size`` decoded body bytes; whether the request may keep them."""
        if self._phase != "body":
            return False
        self._body_received += size
        limit = self.policy.max_request_bytes
        if self._body_received > limit:
            self.reject(too_large(limit))
            return False
        if self._chunked:
            budget = self.budget
            if budget is not None and not budget.reserve(size):
                self.reject(overloaded())
                return False
            self._reserved += size
        return True

    def _chunk_size(self, size: int) -> None:
        # Called by the chunked decoder before a chunk's data (private hook 2).
        limit = self.policy.max_request_bytes
        if size > MAX_FRAMING_LENGTH:
            raise _MalformedChunkedDataError("chunk size out of range")
        if self._body_received + size > limit:
            self.reject(too_large(limit))
            raise _MalformedChunkedDataError("body over the limit")

    def _check_head(self) -> RelayError | None:
        """The error to answer once the headers are complete, if any."""
        length = self.length
        if length is not None and length > MAX_FRAMING_LENGTH:
            return malformed("Content-Length is out of range")
        limit = self.policy.max_request_bytes
        if length is not None and length > limit:
            return too_large(limit)
        policy = self.policy
        if policy.checks_headers_of(self._method, self._target.split(b"?", 1)[0]):
            try:
                error = policy.check_headers(_headers(self.requests[-1].requestHeaders))
            except Exception:
                log.failure("a header check failed")
                return api_error("internal relay error while checking the request headers")
            if error is not None:
                return error
        decoder = self._transferDecoder
        self._chunked = length is None
        if isinstance(decoder, _ChunkedTransferDecoder):
            self._transferDecoder = _ReportingChunkedDecoder(decoder, self._chunk_size)
        self._body_received = 0
        budget = self.budget
        if length != 0 and budget is not None:
            # A chunked body reserves as it arrives, but needs room for its first bytes.
            wanted = length if length is not None else 1
            if not budget.reserve(wanted):
                return overloaded()
            self._reserved = wanted
        return None

    def _release(self) -> None:
        if self._reserved and self.budget is not None:
            self.budget.release(self._reserved)
        self._reserved = 0

    # -- deadlines -----------------------------------------------------------------------

    def _start_head(self) -> None:
        self._phase = "head"
        self._cancel(self._head_timer)
        self._head_timer = self.callLater(self.policy.header_timeout, self._head_timed_out)  # type: ignore[no-untyped-call]

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_received == 0:
            # Nothing of a request arrived: close quietly, as for an idle connection.
            self._phase = "rejected"
            self.loseConnection()  # type: ignore[no-untyped-call]
            return
        self.reject(too_slow(
            f"the request headers did not arrive within {self.policy.header_timeout:g} s"))

    def _schedule_body_check(self) -> None:
        rate = self.policy.min_body_rate
        if rate <= 0:
            return
        # The moment the bytes received so far stop meeting the minimum average rate.
        due = self._body_started + self.policy.body_grace + self._body_received / rate
        self._body_timer = self.callLater(max(0.0, due - self._now()), self._check_body_rate)  # type: ignore[no-untyped-call]

    def _check_body_rate(self) -> None:
        self._body_timer = None
        if self._phase != "body":
            return
        rate = self.policy.min_body_rate
        due = self._body_started + self.policy.body_grace + self._body_received / rate
        if due <= self._now():
            self.reject(too_slow(f"the request body arrived slower than {rate} bytes/s"))
        else:
            self._schedule_body_check()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None

    # -- answering -----------------------------------------------------------------------

    def _has_bare_lf(self, data: bytes) -> bool:
        """Whether the head part of ``data`` has a LF not preceded by CR."""
        buf = self._lf_tail + data
        end = buf.find(b"\r\n\r\n")
        head = buf if end < 0 else buf[:end + 4]
        start = len(self._lf_tail)
        self._lf_tail = buf[-3:] if end < 0 else b""
        i = head.find(b"\n", start)
        while i >= 0:
            if i == 0 or head[i - 1] != 0x0D:
                return True
            i = head.find(b"\n", i + 1)
        return False

    def _reject_long_head(self, in_request_line: bool) -> None:
        limit = self.policy.max_head_bytes
        if in_request_line:
            self.reject(RelayError("invalid_request_error",
                                   f"the request line is longer than {limit} bytes",
                                   status=414))
        else:
            self.reject(RelayError("invalid_request_error",
                                   f"the request headers are larger than {limit} bytes",
                                   status=431))

    def reject(self, error: RelayError) -> None:
        """Answer ``error`` now, stop reading and close once it is written."""
        if self._phase == "rejected":
            return
        self._phase = "rejected"
        self._cancel_timers()
        self._release()
        self.persistent = False
        self.setTimeout(None)  # type: ignore[no-untyped-call]
        rid = request_id()
        path = self._target.split(b"?", 1)[0]
        log.info("{method} {path} {status} rejected at the front door: {message} "
                 "request_id={request_id}",
                 method=self._method.decode("ascii", "replace") or "-",
                 path=path[:200].decode("ascii", "replace") or "-",
                 status=error.status, message=error.message, request_id=rid)
        on_reject = self.policy.on_reject
        if on_reject is not None:
            try:
                on_reject(operation_of(self._method, path), error)
            except Exception:
                log.failure("recording a front-door answer failed")
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        transport.write(error_response(error, rid))
        self.loseConnection()  # type: ignore[no-untyped-call]
        # A client that never reads the answer must not hold the connection open.
        abort = cast(ITCPTransport, transport).abortConnection
        self._abort_timer = self.callLater(  # type: ignore[no-untyped-call]
            self.policy.header_timeout, abort)
