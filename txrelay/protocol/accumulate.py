"""
Build one Anthropic ``Message`` from a stream of events.

A non-streaming request is served by the same event stream as a streaming one and folded here,
so the two can never disagree (DESIGN.md, "one internal representation"). Deltas are kept as
lists of pieces and joined once when their block stops, so the work is linear in the message
length however small the deltas are.
"""

from __future__ import annotations

from typing import Any

import attrs

from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.events import Event
from txrelay.protocol.jsoncodec import loads


@attrs.define
class MessageAccumulator:
    """Feed events with :meth:`feed`; :meth:`result` returns the finished message."""

    message: dict[str, Any] | None = None
    _json_parts: dict[int, list[str]] = attrs.Factory(dict)
    #: index → (field, pieces) for text and thinking blocks still receiving deltas.
    _text_parts: dict[int, tuple[str, list[str]]] = attrs.Factory(dict)
    error: RelayError | None = None
    stopped: bool = False

    def feed(self, event: Event) -> None:
        """Fold one event into the message."""
        kind = event["type"]
        if kind == "message_start":
            self.message = dict(event["message"])
            self.message["content"] = list(self.message.get("content") or [])
            self.message["usage"] = dict(self.message.get("usage") or {})
        elif kind == "content_block_start":
            self._msg()["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            self._delta(event["index"], event["delta"])
        elif kind == "content_block_stop":
            self._join_text(event["index"])
            parts = self._json_parts.pop(event["index"], None)
            if parts is not None:
                block = self._msg()["content"][event["index"]]
                text = "".join(parts)
                try:
                    block["input"] = loads(text) if text else {}
                except (ValueError, RecursionError):  # JSONDecodeError, huge ints, deep nesting
                    raise api_error("the model produced tool input that is not JSON") from None
        elif kind == "message_delta":
            msg = self._msg()
            msg.update(event.get("delta") or {})
            msg["usage"].update(event.get("usage") or {})
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            err = event["error"]
            self.error = RelayError(err.get("type", "api_error"), err.get("message", ""))

    def _msg(self) -> dict[str, Any]:
        if self.message is None:
            raise api_error("the upstream stream did not start with message_start")
        return self.message

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._msg()["content"][index]
        kind = delta["type"]
        if kind == "text_delta":
            self._pieces(index, block, "text").append(delta["text"])
        elif kind == "thinking_delta":
            self._pieces(index, block, "thinking").append(delta["thinking"])
        elif kind == "signature_delta":
            block["signature"] = delta["signature"]
        elif kind == "input_json_delta":
            self._json_parts.setdefault(index, []).append(delta["partial_json"])
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])

    def _pieces(self, index: int, block: dict[str, Any], field: str) -> list[str]:
        entry = self._text_parts.get(index)
        if entry is None:
            entry = self._text_parts[index] = (field, [block.get(field, "")])
        return entry[1]

    def _join_text(self, index: int) -> None:
        entry = self._text_parts.pop(index, None)
        if entry is not None:
            field, pieces = entry
            self._msg()["content"][index][field] = "".join(pieces)

    def result(self) -> dict[str, Any]:
        """The finished message; raises the stream's error if it ended with one."""
        if self.error is not None:
            raise self.error
        for index in list(self._text_parts):  # blocks the stream never stopped
            self._join_text(index)
        return self._msg()
