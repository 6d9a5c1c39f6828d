# -*- test-case-name: tests.test_demo -*-
"""
The ``demo`` model: deterministic, offline, and shaped like a real model's stream.

It answers text in several deltas, thinks first when thinking is on, calls a tool when the
request offers tools and the last user turn names one (or ``tool_choice`` forces one), and
finishes after the tool result comes back. It honours ``max_tokens`` and ``stop_sequences``.
Its purpose is the quick start, smoke tests and client integration tests on any machine.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from txrelay.protocol import events as ev
from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.events import Event
from txrelay.protocol.ids import tool_use_id
from txrelay.protocol.jsoncodec import dumps_str
from txrelay.protocol.tokens import estimate_text_tokens

_WORDS_PER_DELTA = 3


def _last_user(req: MessagesRequest) -> list[dict[str, Any]]:
    for msg in reversed(req.messages):
        if msg.role == "user":
            return msg.blocks()
    return []


def _user_text(blocks: list[dict[str, Any]]) -> str:
    texts: list[str] = [
        b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    # Claude Code prefixes turns with <system-reminder> blocks; the prompt is the last text.
    plain = [t for t in texts if not t.lstrip().startswith("<system-reminder>")]
    return (plain or texts or [""])[-1].strip()


def _tool_names_by_id(req: MessagesRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for msg in req.messages:
        if msg.role == "assistant":
            for b in msg.blocks():
                if b.get("type") == "tool_use":
                    out[str(b.get("id"))] = str(b.get("name"))
    return out


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        c["text"] for c in content
        if isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
    )


def _chosen_tool(req: MessagesRequest, prompt: str) -> dict[str, Any] | None:
    tools = [
        t for t in req.tools or ()
        if isinstance(t.get("input_schema"), dict) and isinstance(t.get("name"), str)
    ]
    choice = (req.tool_choice or {}).get("type", "auto")
    if not tools or choice == "none":
        return None
    if choice == "tool":
        wanted = (req.tool_choice or {}).get("name")
        return next((t for t in tools if t["name"] == wanted), None)
    lowered = prompt.lower()
    named = [
        t for t in tools
        if re.search(r"(?<![\w-])" + re.escape(t["name"].lower()) + r"(?![\w-])", lowered)
    ]
    if named:
        return max(named, key=lambda t: len(t["name"]))
    return tools[0] if choice == "any" else None


def _value_for(name: str, schema: dict[str, Any], prompt: str) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    lowered = name.lower()
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        return _input_for(schema, prompt)
    if "path" in lowered or "file" in lowered:
        # An absolute path named in the prompt, else a relative one.
        found = re.search(r"(?<![\w.])/[\w.-]+(?:/[\w.-]+)*", prompt)
        return found.group(0).rstrip(".") if found else "demo.txt"
    if "command" in lowered:
        quoted = re.search(r"`([^`]+)`", prompt)
        return quoted.group(1) if quoted else "echo hello from txrelay"
    if "content" in lowered:
        return "Hello from the txrelay demo model.\n"
    if "url" in lowered:
        return "https://example.com/"
    return prompt[:80] or "demo"


def _input_for(schema: dict[str, Any], prompt: str) -> dict[str, Any]:
    props = schema.get("properties")
    wanted = schema.get("required")
    if not isinstance(props, dict) or not isinstance(wanted, list):
        return {}
    required = [r for r in wanted if isinstance(r, str) and r in props]
    return {
        name: _value_for(name, props[name] if isinstance(props[name], dict) else {}, prompt)
        for name in required
    }


def _chunks(text: str) -> list[str]:
    words = re.findall(r"\S+\s*|\s+", text)
    return ["".join(words[i:i + _WORDS_PER_DELTA]) for i in range(0, len(words), _WORDS_PER_DELTA)]


def _signature(text: str) -> str:
    return "txr1.demo." + hashlib.sha256(text.encode()).hexdigest()[:32]


def demo_events(
    req: MessagesRequest, *, model: str, message_id: str, input_tokens: int
) -> list[Event]:
    """
    The whole event stream the demo model answers ``req`` with.

    ``req`` is normally validated; the readers here still take any JSON value where the
    schema has a block field, as a stage may build a request by hand.
    """
    blocks = _last_user(req)
    results = [b for b in blocks if b.get("type") == "tool_result"]
    prompt = _user_text(blocks)
    tool: dict[str, Any] | None = None
    if results:
        names = _tool_names_by_id(req)
        parts = []
        for r in results:
            name = names.get(str(r.get("tool_use_id")), "tool")
            status = "failed" if r.get("is_error") else "returned"
            snippet = " ".join(_result_text(r).split())[:160]
            parts.append(f"The {name} tool {status}: {snippet or '(nothing)'}")
        text = " ".join(parts) + " That completes the task."
    else:
        tool = _chosen_tool(req, prompt)
        if tool is not None:
            text = f"I'll use the {tool['name']} tool."
        else:
            shown = " ".join(prompt.split())[:200]
            text = (
                "Hello from the txrelay demo model. "
                + (f'You said: "{shown}".' if shown else "You sent no text.")
                + " I am a deterministic offline model for trying the relay out."
            )

    budget = req.max_tokens if req.max_tokens is not None else 1 << 30
    out: list[Event] = [
        ev.message_start(message_id, model, ev.empty_usage(input_tokens)),
        ev.ping(),
    ]
    index = 0
    produced = 0
    stop_reason = "end_turn"
    stop_sequence: str | None = None

    if req.thinking_enabled() and budget > 0:
        thought = f"The user wrote {len(prompt.split())} words. I will answer briefly."
        out += [ev.thinking_block_start(index)]
        out += [ev.thinking_delta(index, c) for c in _chunks(thought)]
        out += [ev.signature_delta(index, _signature(thought)), ev.block_stop(index)]
        index += 1
        produced += len(thought)

    for seq in req.stop_sequences or ():
        if seq and seq in text:
            text = text[: text.index(seq)]
            stop_reason, stop_sequence, tool = "stop_sequence", seq, None
    remaining_chars = max(0, budget * 4 - produced)
    if len(text) > remaining_chars:
        text = text[:remaining_chars]
        stop_reason, stop_sequence, tool = "max_tokens", None, None
    if text.strip():
        out.append(ev.text_block_start(index))
        out += [ev.text_delta(index, c) for c in _chunks(text)]
        out.append(ev.block_stop(index))
        index += 1
        produced += len(text)

    if tool is not None:
        args = dumps_str(_input_for(tool["input_schema"], prompt))
        cut = max(1, len(args) // 2)
        out += [
            ev.tool_use_block_start(index, tool_use_id(), tool["name"]),
            ev.input_json_delta(index, ""),
            ev.input_json_delta(index, args[:cut]),
            ev.input_json_delta(index, args[cut:]),
            ev.block_stop(index),
        ]
        produced += len(args)
        stop_reason = "tool_use"

    out.append(ev.message_delta(stop_reason, stop_sequence, {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": estimate_text_tokens(produced),
    }))
    out.append(ev.message_stop())
    return out
