"""
An incremental Server-Sent Events parser and the encoder for Anthropic event streams.

The parser follows the HTML living standard's event-stream rules (R-X15): lines end at CRLF,
LF or CR (never at U+2028 and friends), comment lines start with ``:``, several ``data:``
lines join with LF, an event dispatches on a blank line, and a final event not followed by a
blank line is still delivered at end of input. It works on bytes and never decodes payloads,
so a multi-byte character split across reads is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from txrelay.protocol.events import Event
from txrelay.protocol.jsoncodec import dumps


@attrs.frozen
class SSEEvent:
    """
    One dispatched server-sent event.

    :ivar event: the ``event:`` field, or ``None`` when absent.
    :ivar data: the ``data:`` lines joined with LF, as bytes.
    :ivar other: fields that are not part of SSE (``error: …`` from old llama.cpp, a bare
        ``proxy error`` line): upstream translators treat them as a broken stream.
    """

    event: str | None
    data: bytes
    other: tuple[tuple[str, str], ...] = ()


@attrs.define
class SSEParser:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    _buffer: bytes = b""
    _held_cr: bool = False
    _started: bool = False
    _event: str | None = None
    _data: list[bytes] = attrs.Factory(list)
    _other: list[tuple[str, str]] = attrs.Factory(list)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` and return every event it completes."""
        if not chunk:
            return []
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if not self._started:
            # A UTF-8 byte-order mark may start the stream, possibly split across reads.
            head = self._buffer + chunk
            if len(head) < 3 and b"\xef\xbb\xbf".startswith(head):
                self._buffer = head
                return []
            self._started = True
            self._buffer = b""
            chunk = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                # It may be the first half of a CRLF split across reads.
                self._held_cr = True
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        # Whole events at a time: the tail after the last blank line stays raw until its
        # event is complete, so the common one-line ``data:`` event skips the line machinery.
        parts = buffer.split(b"\n\n")
        self._buffer = parts.pop()
        out: list[SSEEvent] = []
        for part in parts:
            if part[:6] == b"data: " and b"\n" not in part:
                out.append(SSEEvent(None, part[6:]))
                continue
            for line in part.split(b"\n"):
                self._line(line, out)
            self._dispatch(out)
        return out

    def finish(self) -> list[SSEEvent]:
        """End of input: deliver a pending line and a final event without its blank line."""
        out: list[SSEEvent] = []
        # A CR held back at the very end only ended the last line, which ends here anyway.
        self._held_cr = False
        if self._buffer:
            for line in self._buffer.split(b"\n"):
                self._line(line, out)
            self._buffer = b""
        self._dispatch(out)
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
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
        self._event = None


def encode_event(event: Event) -> bytes:
    """One Anthropic event as an SSE frame: ``event:`` line equal to its type (R-X16)."""
    kind: str = event["type"]
    return b"event: " + kind.encode("ascii") + b"\ndata: " + dumps(event) + b"\n\n"


def encode_events(events: Iterable[Event]) -> bytes:
    """Several events as one buffer, for one socket write per upstream read."""
    return b"".join([encode_event(e) for e in events])
