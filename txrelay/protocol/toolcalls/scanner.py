"""
The text of one text block, split into what stays text and the tool calls written in it.

:class:`CallScanner` is fed a text block's deltas and answers pieces: :class:`Text` to send
on, :class:`Calls` to turn into ``tool_use`` blocks. It holds back only what could still be
the start of a call:

- the longest end of the text that is a prefix of an open marker (``<tool_c`` …), at most
  the longest marker's length minus one; text that can no longer start one is released;
- from an open marker on, the call's text until it ends (or turns out not to be a call: then
  the marker is released as text and what followed it is scanned again; a call still open
  when the block ends is released as text as it came);
- whitespace at the start of the block and right after a call, so a block never becomes
  whitespace next to a ``tool_use`` (whitespace after a call is dropped; a block of nothing
  but whitespace passes as it was);
- with ``bare-json``, a block whose first non-blank character is ``{``, to the end of the
  block: a bare JSON object naming an offered tool is a call only when it is the whole block.

Pieces do not depend on how the text was split into deltas, and the work is linear in the
text: each character is scanned at most twice.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from txrelay.protocol.toolcalls.arguments import Rejected, ToolCall, ToolSet
from txrelay.protocol.toolcalls.markers import (
    BODIES,
    MARKERS,
    Body,
    JsonValue,
    NotACall,
    RawCall,
    decode_json,
)

FORMATS = frozenset({*MARKERS, "bare-json"})
_WS = " \t\r\n"
#: The keys a bare JSON call may have (anything else: it is the model's JSON answer).
_BARE_KEYS = frozenset({"name", "arguments", "parameters", "type", "id"})


@attrs.frozen
class Text:
    """Text to pass on."""

    text: str


@attrs.frozen
class Calls:
    """Tool calls found in the text (``format`` names the notation they were written in)."""

    calls: tuple[ToolCall, ...]
    format: str


Piece = Text | Calls


class _Mode(enum.Enum):
    TEXT = "text"
    BODY = "body"
    BARE = "bare"


def longest_marker(formats: Iterable[str]) -> int:
    """The length of the longest open marker among ``formats`` (0 if none)."""
    return max((len(MARKERS[f]) for f in formats if f in MARKERS), default=0)


class CallScanner:
    """
    Scans one text block (see the module docstring).

    :param tools: the offered tools; only calls naming one of them are converted.
    :param formats: which notations to recognise (:data:`FORMATS`).
    """

    def __init__(self, tools: ToolSet, formats: Iterable[str] = FORMATS) -> None:
        chosen = frozenset(formats)
        self.tools = tools
        self._markers = [(MARKERS[f], f) for f in sorted(chosen) if f in MARKERS]
        self._longest = longest_marker(chosen)
        self._bare = "bare-json" in chosen and bool(tools)
        self._mode = _Mode.TEXT
        self._buf = ""
        self._ws = ""
        self._segment_start = True
        self._block_start = True
        self._format = ""
        self._marker = ""
        self._body: Body | None = None
        self._raw: list[str] = []
        self._bare_json = JsonValue("{")
        self._bare_done = False
        #: Calls converted so far in this block.
        self.calls_made = 0
        #: Why text that looked like a call was left as text.
        self.rejections: list[str] = []

    @property
    def held(self) -> int:
        """How many characters are held back now."""
        return len(self._ws) + len(self._buf) + sum(map(len, self._raw))

    def feed(self, text: str) -> list[Piece]:
        """The pieces ``text`` (the next delta) releases."""
        out: list[Piece] = []
        self._process(text, out)
        return out

    def end(self) -> list[Piece]:
        """The block ended: everything still held, decided."""
        out: list[Piece] = []
        while self._mode is not _Mode.TEXT:
            if self._mode is _Mode.BODY:
                self._end_body(out)
            else:
                self._end_bare(out)
        if self._buf:
            buf, self._buf = self._buf, ""
            self._release(buf, out)
        if self._ws and self.calls_made == 0:
            ws, self._ws = self._ws, ""
            self._release(ws, out)  # a block of nothing but whitespace passes unchanged
        self._ws = ""
        return out

    # modes

    def _process(self, text: str, out: list[Piece]) -> None:
        while text:
            if self._mode is _Mode.TEXT:
                text = self._text(text, out)
            elif self._mode is _Mode.BODY:
                text = self._in_body(text, out)
            else:
                text = self._in_bare(text, out)

    def _text(self, text: str, out: list[Piece]) -> str:
        buf, self._buf = self._buf + text, ""
        if self._segment_start:
            stripped = buf.lstrip(_WS)
            self._ws += buf[: len(buf) - len(stripped)]
            if not stripped:
                return ""
            buf = stripped
            if self._bare and self._block_start and buf[0] == "{":
                self._mode = _Mode.BARE
                self._bare_json = JsonValue("{")
                self._bare_done = False
                self._raw = []
                return buf
        best, found = -1, ""
        for marker, fmt in self._markers:
            i = buf.find(marker)
            if i >= 0 and (best < 0 or i < best):
                best, found, self._format = i, marker, fmt
        if best >= 0:
            self._release(buf[:best], out)
            self._mode = _Mode.BODY
            self._marker = found
            self._body = BODIES[self._format]()
            self._raw = [found]
            return buf[best + len(found):]
        keep = self._prefix_length(buf)
        self._release(buf[: len(buf) - keep], out)
        self._buf = buf[len(buf) - keep:]
        return ""

    def _prefix_length(self, buf: str) -> int:
        """The length of the longest end of ``buf`` that is a proper prefix of a marker."""
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-n:]
            if any(m.startswith(tail) for m, _ in self._markers):
                return n
        return 0

    def _in_body(self, text: str, out: list[Piece]) -> str:
        assert self._body is not None
        self._raw.append(text)
        try:
            end = self._body.feed(text)
        except NotACall:
            return self._not_a_call(out)
        if end < 0:
            return ""
        self._raw[-1] = text[:end]
        raw, back = "".join(self._raw), self._body.pushback
        self._raw = [raw[: len(raw) - len(back)]]
        self._decide(self._body.calls(), out)
        return back + text[end:]

    def _end_body(self, out: list[Piece]) -> None:
        assert self._body is not None
        if self._body.finish():
            self._decide(self._body.calls(), out)
            return
        # An unfinished call is text as it came. Not scanned again: a block of nothing but
        # unclosed markers would make that quadratic.
        raw, self._raw = "".join(self._raw), []
        self._mode = _Mode.TEXT
        self.rejections.append(f"{self._format} tool call not finished by the block's end")
        self._release(raw, out)

    def _not_a_call(self, out: list[Piece]) -> str:
        """Release the marker as text; what followed it is to be scanned again."""
        rest = "".join(self._raw[1:])
        self._raw = []
        self._mode = _Mode.TEXT
        self._release(self._marker, out)
        return rest

    def _decide(self, raw_calls: list[RawCall] | None, out: list[Piece]) -> None:
        raw, self._raw = "".join(self._raw), []
        self._mode = _Mode.TEXT
        if raw_calls is None:
            self.rejections.append(f"{self._format} tool call that is not a JSON call object")
            self._release(raw, out)
            return
        checked = [self.tools.check(name, args) for name, args in raw_calls]
        rejected = [c for c in checked if isinstance(c, Rejected)]
        if rejected:
            self.rejections.extend(r.reason for r in rejected)
            self._release(raw, out)
            return
        calls = tuple(c for c in checked if isinstance(c, ToolCall))
        out.append(Calls(calls, self._format))
        self.calls_made += len(calls)
        self._ws = ""
        self._segment_start = True
        self._block_start = False

    def _in_bare(self, text: str, out: list[Piece]) -> str:
        self._raw.append(text)
        tail = text
        if not self._bare_done:
            end = self._bare_json.feed(text)
            if end < 0:
                return ""
            self._bare_done = True
            tail = text[end:]
        if tail.strip(_WS):
            return self._not_bare()
        return ""

    def _not_bare(self) -> str:
        everything, self._raw = "".join(self._raw), []
        self._mode = _Mode.TEXT
        self._block_start = False
        return everything

    def _end_bare(self, out: list[Piece]) -> None:
        raw = "".join(self._raw).strip(_WS)
        value = decode_json(raw) if self._bare_done else None
        if (isinstance(value, dict) and set(value) <= _BARE_KEYS
                and self.tools.offers(value.get("name"))
                and ("arguments" in value or "parameters" in value)):
            self._format = "bare-json"
            self._decide([(value["name"], value.get("arguments", value.get("parameters")))],
                         out)
            return
        self._process(self._not_bare(), out)

    def _release(self, text: str, out: list[Piece]) -> None:
        if not text:
            return
        text, self._ws = self._ws + text, ""
        self._segment_start = False
        self._block_start = False
        if out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + text)
        else:
            out.append(Text(text))
