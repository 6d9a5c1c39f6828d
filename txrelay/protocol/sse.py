"""
An incremental Server-Sent Events parser and the encoder for Anthropic event streams.

The parser follows the HTML living standard's event-stream rules (R-X15): lines end at CRLF,
LF or CR (never at U+2028 and friends), comment lines start with ``:``, several ``data:``
lines join with LF, an event dispatches on a blank line, and a final event not followed by a
blank line is still delivered at end of input. It works on bytes and never decodes payloads,
so a multi-byte character split across reads is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

from txrelay.protocol.events import Event
from txrelay.protocol.jsoncodec import dumps, fast_dumps


class SSEEvent(NamedTuple):
    """
    One dispatched server-sent event.

    A named tuple rather than an attrs class: one is made per upstream chunk, and a tuple is
    made in about two thirds of the time of a frozen attrs instance.

    :ivar event: the ``event:`` field, or ``None`` when absent.
    :ivar data: the ``data:`` lines joined with LF, as bytes.
    :ivar other: fields that are not part of SSE (``error: …`` from old llama.cpp, a bare
        ``proxy error`` line): upstream translators treat them as a broken stream.
    """

    event: str | None
    data: bytes
    other: tuple[tuple[str, str], ...] = ()


# Byte values, for membership tests: ``b"\r" in data`` first tries the operand as an integer
# and builds (then drops) a TypeError, which costs more than the search.
_CR = 0x0D
_LF = 0x0A

# SSEEvent(...) runs the named tuple's __new__, a Python function; tuple.__new__ is not.
_make_event = tuple.__new__

#: Default bound on one event (its lines with their line ends, plus a line still incomplete).
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024


class SSEEventTooLarge(Exception):
    """An event grew past the parser's ``max_event_size``."""

    def __init__(self, limit: int, events: list[SSEEvent] | None = None) -> None:
        super().__init__(f"a stream event is larger than the {limit}-byte limit")
        #: The limit that was exceeded, in bytes.
        self.limit = limit
        #: The events completed before the oversized one (in the same :meth:`SSEParser.feed`).
        self.events: list[SSEEvent] = events or []


class SSEParser:
    """
    Feed it bytes as they arrive; it returns the events completed so far.

    The work is linear in the input, however the reads split it (the receive-buffer design of
    h11): complete lines are consumed as soon as they arrive, only the last incomplete line is
    kept, and only newly arrived bytes are searched for its end.

    :param max_event_size: the largest event accepted, in bytes: its lines (comments
        included) with their line ends, plus the line still incomplete;
        beyond it :meth:`feed` raises :class:`SSEEventTooLarge` (carrying the events completed
        before it), and keeps raising it.
    """

    __slots__ = (
        "_data",
        "_event",
        "_failed",
        "_head",
        "_held_cr",
        "_line",
        "_line_len",
        "_max",
        "_more",
        "_other",
        "_size",
        "_started",
    )

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._max = max_event_size
        self._head = b""  # the first bytes while a byte-order mark may still be arriving
        # The incomplete last line: its first piece, the pieces after it (so a long line
        # costs no re-joining per read), and its length (meaningful while _line is not empty).
        self._line = b""
        self._more: list[bytes] = []
        self._line_len = 0
        self._held_cr = False
        self._started = False
        self._failed = False
        self._event: str | None = None
        self._data: list[bytes] = []
        self._other: list[tuple[str, str]] = []
        self._size = 0  # bytes of the lines of the event being built, line ends included

    @property
    def max_event_size(self) -> int:
        """The largest event accepted, in bytes."""
        return self._max

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` and return every event it completes."""
        if self._failed:
            raise SSEEventTooLarge(self._max)
        if not chunk:
            return []
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if not self._started:
            # A UTF-8 byte-order mark may start the stream, possibly split across reads.
            head = self._head + chunk
            if len(head) < 3 and b"\xef\xbb\xbf".startswith(head):
                self._head = head
                return []
            self._started = True
            self._head = b""
            chunk = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        if (
            not self._line
            and not self._size
            and chunk[:6] == b"data: "
            and chunk[-2:] == b"\n\n"
            and len(chunk) < self._max
        ):
            # The common read of a streamed answer: exactly one one-line ``data:`` event.
            data = chunk[6:-2]
            if _LF not in data and _CR not in data:
                return [_make_event(SSEEvent, (None, data, ()))]
        if _CR in chunk:
            if chunk.endswith(b"\r"):
                # It may be the first half of a CRLF split across reads.
                self._held_cr = True
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[SSEEvent] = []
        line = self._line
        if line:
            # Only the new bytes can hold the end of the line.
            if _LF not in chunk:
                self._more.append(chunk)
                self._line_len += len(chunk)
                if self._size + self._line_len > self._max:
                    self._fail(out)
                return out
            # The line is complete: rejoin it (each byte is copied once) and parse as usual.
            if self._more:
                chunk = b"".join([line, *self._more, chunk])
                self._more = []
            else:
                chunk = line + chunk
            self._line = b""
        # Whole events at a time: the common one-line ``data:`` event skips the line machinery.
        parts = chunk.split(b"\n\n")
        tail = parts.pop()
        if parts:
            if self._size:  # lines of an event came before: the first part ends it
                for line in parts[0].split(b"\n"):
                    self._line_(line, out)
                self._dispatch(out)
                del parts[0]
            # No part of a chunk within the limit can exceed it.
            fast = len(chunk) < self._max
            for part in parts:
                if fast and part[:6] == b"data: " and _LF not in part:
                    out.append(_make_event(SSEEvent, (None, part[6:], ())))
                    continue
                for line in part.split(b"\n"):
                    self._line_(line, out)
                self._dispatch(out)
        if tail:
            if _LF in tail:
                lines = tail.split(b"\n")
                last = lines.pop()
                for line in lines:
                    self._line_(line, out)
            else:
                last = tail
            if last:
                self._line = last
                size = self._line_len = len(last)
                if size + self._size > self._max:
                    self._fail(out)
        return out

    def finish(self) -> list[SSEEvent]:
        """End of input: deliver a pending line and a final event without its blank line."""
        out: list[SSEEvent] = []
        if self._failed:
            return out
        # A CR held back at the very end only ended the last line, which ends here anyway.
        self._held_cr = False
        # The whole input may have been a prefix of a byte-order mark.
        line = self._head + self._line + b"".join(self._more)
        self._head = self._line = b""
        self._more = []
        if line:
            self._line_(line, out)
        self._dispatch(out)
        return out

    def _fail(self, out: list[SSEEvent]) -> NoReturn:
        self._failed = True
        self._line = b""
        self._more = []
        self._data = []
        self._other = []
        raise SSEEventTooLarge(self._max, out)

    def _line_(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        self._size += len(line) + 1
        if self._size > self._max:
            self._fail(out)
        if line[0] == 0x3A:  # ":" comment / keep-alive
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name in (b"id", b"retry"):
            pass
        else:
            self._other.append(
                (name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
            )

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._data or self._other:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            out.append(SSEEvent(self._event, data, tuple(self._other)))
            self._data = []
            self._other = []
        self._size = 0
        self._event = None


class RawEvent(dict[str, Any]):
    """
    An event decoded from an upstream frame that keeps the frame's bytes, so that
    :func:`encode_event` sends them as they came (Anthropic pass-through, R-P4).

    Stream filters never see one (:class:`txrelay.streams.EventStream` hands them a plain
    copy), so an event a stage changed is always encoded again.
    """

    __slots__ = ("raw",)

    def __init__(self, decoded: dict[str, Any], *, raw: bytes) -> None:
        super().__init__(decoded)
        self.raw = raw


def plain(event: Event) -> Event:
    """``event`` without its original bytes (a copy when it had them)."""
    return dict(event) if type(event) is RawEvent else event


#: The frame heads (``event: <type>`` and the start of the ``data:`` line) of the event types
#: seen so far: Anthropic's handful, or a few more a stage invented, up to :data:`_MAX_HEADS`.
_HEADS: dict[str, bytes] = {}
_MAX_HEADS = 64


def encode_event(event: Event) -> bytes:
    """One Anthropic event as an SSE frame: ``event:`` line equal to its type (R-X16)."""
    if type(event) is RawEvent:
        return event.raw
    kind: str = event["type"]
    try:
        data = fast_dumps(event)
    except TypeError:
        data = dumps(event)
    head = _HEADS.get(kind) if type(kind) is str else None
    if head is None:
        head = b"event: " + kind.encode("ascii") + b"\ndata: "
        if type(kind) is str and len(_HEADS) < _MAX_HEADS:
            _HEADS[kind] = head
    return b"%b%b\n\n" % (head, data)


def encode_events(events: Sequence[Event]) -> bytes:
    """Several events as one buffer, for one socket write per upstream read."""
    if len(events) == 1:  # the common case of one delta per upstream read
        return encode_event(events[0])
    return b"".join([encode_event(e) for e in events])
