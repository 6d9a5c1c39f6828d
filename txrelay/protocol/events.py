"""
Anthropic stream events: the one internal representation every backend produces.

An event is a plain JSON-ready ``dict`` whose ``"type"`` is the SSE event name
(anthropic-messages.md §11). Plain dicts keep the hot path free of conversions: what a
translator builds is exactly what the encoder serialises. The helpers here build each event
and :class:`StreamGrammar` checks a sequence against the grammar clients rely on.
"""

from __future__ import annotations

from typing import Any

import attrs

Event = dict[str, Any]

#: Delta type allowed for each block type.
_DELTAS_FOR_BLOCK: dict[str, frozenset[str]] = {
    "text": frozenset({"text_delta", "citations_delta"}),
    "thinking": frozenset({"thinking_delta", "signature_delta"}),
    "tool_use": frozenset({"input_json_delta"}),
    "server_tool_use": frozenset({"input_json_delta"}),
    "mcp_tool_use": frozenset({"input_json_delta"}),
}


def empty_usage(input_tokens: int = 0) -> dict[str, Any]:
    """A ``usage`` object for ``message_start`` with the additive cache split (§8.2)."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }


def message_start(message_id: str, model: str, usage: dict[str, Any]) -> Event:
    """``message_start`` with an empty assistant message (R-S1)."""
    return {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        },
    }


def ping() -> Event:
    """A keep-alive ``ping``."""
    return {"type": "ping"}


def block_start(index: int, block: dict[str, Any]) -> Event:
    """``content_block_start`` for ``block`` at ``index``."""
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_block_start(index: int) -> Event:
    """Start of a text block."""
    return block_start(index, {"type": "text", "text": ""})


def thinking_block_start(index: int) -> Event:
    """Start of a thinking block (R-S5)."""
    return block_start(index, {"type": "thinking", "thinking": "", "signature": ""})


def tool_use_block_start(index: int, tool_id: str, name: str) -> Event:
    """Start of a tool_use block with empty input."""
    return block_start(index, {"type": "tool_use", "id": tool_id, "name": name, "input": {}})


def text_delta(index: int, text: str) -> Event:
    """A ``text_delta``."""
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}


def thinking_delta(index: int, thinking: str) -> Event:
    """A ``thinking_delta``."""
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "thinking_delta", "thinking": thinking}}


def signature_delta(index: int, signature: str) -> Event:
    """A ``signature_delta``: replaces the block's signature."""
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "signature_delta", "signature": signature}}


def input_json_delta(index: int, partial_json: str) -> Event:
    """An ``input_json_delta`` carrying a fragment of the tool input's JSON text."""
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial_json}}


def block_stop(index: int) -> Event:
    """``content_block_stop``."""
    return {"type": "content_block_stop", "index": index}


def message_delta(
    stop_reason: str | None, stop_sequence: str | None, usage: dict[str, Any]
) -> Event:
    """The one ``message_delta``; ``usage`` holds cumulative totals (R-S14)."""
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": usage,
    }


def message_stop() -> Event:
    """``message_stop``: the last event of a successful stream (R-S15)."""
    return {"type": "message_stop"}


class GrammarError(Exception):
    """An event sequence broke the Anthropic stream grammar."""


@attrs.define
class StreamGrammar:
    """
    Checks an event sequence against the grammar of anthropic-messages.md §11.2.

    Feed events one at a time with :meth:`feed`; call :meth:`close` at the end. Raises
    :class:`GrammarError` naming the first violation. Used by tests and by the relay's
    optional strict mode.
    """

    state: str = "initial"  # initial → message → block → delta_sent → stopped → errored
    next_index: int = 0
    open_block: str | None = None
    saw_message_delta: bool = False

    def feed(self, event: Event) -> None:
        """Check one more event."""
        kind = event.get("type")
        if self.state in ("stopped", "errored"):
            raise GrammarError(f"{kind} after the stream ended")
        if kind == "error":
            self.state = "errored"
            return
        if kind == "ping":
            if self.state == "initial":
                raise GrammarError("ping before message_start")
            return
        if self.state == "initial":
            if kind != "message_start":
                raise GrammarError(f"first event is {kind}, not message_start")
            self.state = "message"
            return
        if kind == "message_start":
            raise GrammarError("second message_start")
        if kind == "content_block_start":
            self._start_block(event)
        elif kind == "content_block_delta":
            self._delta(event)
        elif kind == "content_block_stop":
            if self.open_block is None or event.get("index") != self.next_index - 1:
                raise GrammarError(f"content_block_stop for block {event.get('index')} not open")
            self.open_block = None
        elif kind == "message_delta":
            if self.open_block is not None:
                raise GrammarError("message_delta while a block is open")
            usage = event.get("usage")
            if not isinstance(usage, dict) or not isinstance(usage.get("output_tokens"), int):
                raise GrammarError("message_delta without usage.output_tokens")
            self.saw_message_delta = True
        elif kind == "message_stop":
            if not self.saw_message_delta:
                raise GrammarError("message_stop without message_delta")
            self.state = "stopped"
        else:
            raise GrammarError(f"unknown event type {kind!r}")

    def _start_block(self, event: Event) -> None:
        if self.saw_message_delta:
            raise GrammarError("content_block_start after message_delta")
        if self.open_block is not None:
            raise GrammarError("content_block_start while another block is open")
        if event.get("index") != self.next_index:
            raise GrammarError(f"block index {event.get('index')}, expected {self.next_index}")
        block = event.get("content_block")
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise GrammarError("content_block_start without a typed content_block")
        self.open_block = block["type"]
        self.next_index += 1

    def _delta(self, event: Event) -> None:
        if self.open_block is None or event.get("index") != self.next_index - 1:
            raise GrammarError(f"delta for block {event.get('index')} that is not open")
        delta = event.get("delta")
        kind = delta.get("type") if isinstance(delta, dict) else None
        allowed = _DELTAS_FOR_BLOCK.get(self.open_block, frozenset())
        if kind not in allowed:
            raise GrammarError(f"{kind} delta in a {self.open_block} block")

    def close(self) -> None:
        """Check that the stream ended properly (``message_stop`` or ``error``)."""
        if self.state not in ("stopped", "errored"):
            raise GrammarError("stream ended without message_stop")
