"""Rendering tool calls as weak models write them, and running the filter on a text stream."""

from __future__ import annotations

import json
import re
from typing import Any

from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.toolcalls.arguments import ToolSet
from txrelay.protocol.toolcalls.filter import ToolCallFilter

READ = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}
ANY = {"name": "do_thing", "input_schema": {"type": "object"}}
TOOLS = [READ, ANY]
STYLES = ("hermes", "mistral-list", "mistral-args", "mistral-call-id", "llama")


def render(style: str, name: str, args: dict[str, Any]) -> str:
    """A call of ``name`` written in ``style``."""
    if style == "hermes":
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"
    if style == "mistral-list":
        return "[TOOL_CALLS]" + json.dumps([{"name": name, "arguments": args}])
    if style == "mistral-args":
        return f"[TOOL_CALLS]{name}[ARGS]" + json.dumps(args)
    if style == "mistral-call-id":
        return f"[TOOL_CALLS]{name}[CALL_ID]Ab3dE6gH9[ARGS]" + json.dumps(args)
    if style == "llama":
        return "<|python_tag|>" + json.dumps({"name": name, "parameters": args})
    raise ValueError(style)


def text_stream(deltas: list[str]) -> list[Event]:
    """An upstream stream of one text block made of ``deltas``."""
    return [ev.message_start("msg_up", "m", ev.empty_usage(5)), ev.ping(),
            ev.text_block_start(0), *(ev.text_delta(0, d) for d in deltas), ev.block_stop(0),
            ev.message_delta("end_turn", None, {"output_tokens": 3}), ev.message_stop()]


def run_filter(events: list[Event], tools: list[dict[str, Any]] | None = None,
               **kwargs: Any) -> list[Event]:
    """``events`` through a fresh :class:`ToolCallFilter`; the output's grammar is checked."""
    f = ToolCallFilter(ToolSet.from_tools(TOOLS if tools is None else tools), **kwargs)
    out = [o for e in events for o in f.feed(e)] + f.finish()
    grammar = StreamGrammar()
    for e in out:
        grammar.feed(e)
    grammar.close()
    return out


def normalise(events: list[Event]) -> list[Event]:
    """Consecutive text deltas of a block merged, so differently split streams compare."""
    out: list[Event] = []
    for e in events:
        d = e.get("delta") or {}
        prev = out[-1] if out else None
        if (d.get("type") == "text_delta" and prev is not None
                and prev.get("type") == "content_block_delta"
                and prev["delta"].get("type") == "text_delta" and prev["index"] == e["index"]):
            out[-1] = ev.text_delta(e["index"], prev["delta"]["text"] + d["text"])
        else:
            out.append(e)
    return out


def fold(events: list[Event]) -> dict[str, Any]:
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    return acc.result()


def no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)
