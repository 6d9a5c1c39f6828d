"""
The stream filter of the ``tool-hygiene`` stage: tool calls written as text become real
``tool_use`` blocks, and the response's tool-use ids become legal and unique.

One upstream text block may become several blocks (text, ``tool_use``, text, …), so every
block after it is renumbered. A text block's ``content_block_start`` is sent with its first
text, so a block that turns out to be only a call leaves no empty text block behind. Held
text is always released by the block's ``content_block_stop``; :meth:`finish` has nothing
to add. When a call was made and the model ended with ``end_turn``, the ``message_delta``
says ``tool_use``, as Anthropic's API does for a message with tool calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from txrelay.protocol import events as ev
from txrelay.protocol.events import Event
from txrelay.protocol.jsoncodec import dumps_str
from txrelay.protocol.toolcalls.arguments import ToolSet
from txrelay.protocol.toolcalls.ids import derived_id, is_legal_id
from txrelay.protocol.toolcalls.scanner import FORMATS, Calls, CallScanner, Piece, Text


@attrs.define(eq=False)
class ToolCallFilter:
    """
    A :class:`txrelay.streams.StreamFilter` (sans-IO: ``feed(event) -> [events]``).

    :ivar tools: the tools the request offered; only calls naming one are converted.
    :ivar formats: the text notations to recognise.
    :ivar message_index: the index this answer will have in the conversation (the request's
        message count): replacement ids are derived from it (:func:`derived_id`).
    :ivar history_ids: tool-use ids the conversation already holds (a reused one is replaced).
    :ivar fix_ids: replace illegal and duplicated ``tool_use`` ids of the upstream's own calls.
    """

    tools: ToolSet
    formats: frozenset[str] = FORMATS
    message_index: int = 0
    history_ids: frozenset[str] = frozenset()
    fix_ids: bool = True
    #: Calls made out of text so far.
    converted: int = 0
    #: Why text that looked like a call stayed text.
    rejections: list[str] = attrs.Factory(list)
    _next: int = 0
    _out_index: int | None = None  # the output index of the upstream block now open
    _scanner: CallScanner | None = None
    _text_start: dict[str, Any] | None = None
    _text_open: int | None = None
    _emitted: bool = False
    _ids: set[str] = attrs.Factory(set)

    def feed(self, event: Event) -> list[Event]:
        kind = event["type"]
        if kind == "content_block_start":
            return self._start(event)
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "content_block_stop":
            return self._stop()
        if kind == "message_delta" and self.converted:
            delta = event.get("delta") or {}
            if delta.get("stop_reason") == "end_turn":
                return [dict(event, delta=dict(delta, stop_reason="tool_use"))]
        return [event]

    def finish(self) -> list[Event]:
        return []

    def _start(self, event: Event) -> list[Event]:
        block = event["content_block"]
        if block.get("type") == "text" and self.tools and self.formats:
            self._scanner = CallScanner(self.tools, self.formats)
            self._text_start, self._text_open, self._emitted = dict(block), None, False
            return []
        self._out_index = index = self._take()
        if block.get("type") == "tool_use":
            block = self._fixed(block, index)
        return [dict(event, index=index, content_block=block)]

    def _delta(self, event: Event) -> list[Event]:
        if self._scanner is None:
            return [dict(event, index=self._out_index)]
        delta = event["delta"]
        if delta.get("type") == "text_delta":
            return self._pieces(self._scanner.feed(delta["text"]))
        out = self._open_text()  # a citations_delta: it belongs to the text around it
        return [*out, dict(event, index=self._text_open)]

    def _stop(self) -> list[Event]:
        scanner = self._scanner
        if scanner is None:
            return [ev.block_stop(self._out_index if self._out_index is not None else 0)]
        out = self._pieces(scanner.end())
        self.rejections.extend(scanner.rejections)
        if not self._emitted:
            out += self._open_text()  # an empty text block passes as it came
        out += self._close_text()
        self._scanner = None
        return out

    def _pieces(self, pieces: Iterable[Piece]) -> list[Event]:
        out: list[Event] = []
        for piece in pieces:
            if isinstance(piece, Text):
                out += self._open_text()
                assert self._text_open is not None
                out.append(ev.text_delta(self._text_open, piece.text))
            elif isinstance(piece, Calls):
                out += self._close_text()
                for call in piece.calls:
                    index = self._take()
                    tool_id = derived_id(self.message_index, index)
                    self._ids.add(tool_id)
                    out += [ev.tool_use_block_start(index, tool_id, call.name),
                            ev.input_json_delta(index, dumps_str(call.input)),
                            ev.block_stop(index)]
                    self.converted += 1
                    self._emitted = True
        return out

    def _open_text(self) -> list[Event]:
        if self._text_open is not None:
            return []
        self._text_open = index = self._take()
        self._emitted = True
        return [ev.block_start(index, dict(self._text_start or {"type": "text", "text": ""}))]

    def _close_text(self) -> list[Event]:
        if self._text_open is None:
            return []
        index, self._text_open = self._text_open, None
        return [ev.block_stop(index)]

    def _take(self) -> int:
        index, self._next = self._next, self._next + 1
        return index

    def _fixed(self, block: dict[str, Any], index: int) -> dict[str, Any]:
        original = block.get("id")
        if self.fix_ids and (not is_legal_id(original) or original in self.history_ids
                             or original in self._ids):
            block = dict(block, id=derived_id(self.message_index, index,
                                              original if isinstance(original, str) else ""))
        self._ids.add(block["id"])
        return block
