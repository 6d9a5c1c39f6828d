"""
What follows an open marker of a text-written tool call, parsed incrementally.

Each body is fed the text after its marker in pieces and says where the call ends
(:meth:`feed` returns the index just after it), that it needs more, or that this is not a call
after all (:class:`NotACall`, as soon as a character rules it out). Work is linear in the text.

- ``hermes`` (Hermes, Qwen 2.5/3, many fine-tunes): ``<tool_call>{"name": …, "arguments":
  …}</tool_call>``; a missing close tag is accepted when the JSON before it is complete
  (never a truncated call); a close tag inside a JSON string is argument text.
- ``mistral``: ``[TOOL_CALLS][{"name": …, "arguments": …}, …]`` and the newer
  ``[TOOL_CALLS]name[ARGS]{…}`` (with ``[CALL_ID]id`` before ``[ARGS]`` in some templates).
- ``llama`` (Llama 3.1 to 3.3): ``<|python_tag|>{"name": …, "parameters": …}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import json_repair

from txrelay.protocol.jsoncodec import JSONDecodeError, loads

#: Open marker of each format.
MARKERS: dict[str, str] = {
    "hermes": "<tool_call>",
    "mistral": "[TOOL_CALLS]",
    "llama": "<|python_tag|>",
}

_WS = " \t\r\n"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
#: What a call is: its tool name and its arguments (an object, a JSON string, or absent).
RawCall = tuple[object, object]


class NotACall(Exception):
    """The text after a marker cannot be a tool call."""


def decode_json(text: str) -> Any:
    """``text`` as JSON, repaired with ``json_repair`` if it is not quite JSON; or ``None``."""
    try:
        return loads(text)
    except JSONDecodeError:
        pass
    try:
        value = json_repair.loads(text)
    except Exception:  # json_repair may raise on pathological input
        return None
    return value if value not in ("", None) else None


def call_objects(value: Any) -> list[RawCall] | None:
    """
    The calls in a decoded call payload: an object with ``name`` and ``arguments`` (or
    ``parameters``, or the OpenAI ``function`` wrapper), or a list of those.
    """
    items = value if isinstance(value, list) else [value]
    out: list[RawCall] = []
    for entry in items:
        if not isinstance(entry, dict):
            return None
        item = entry["function"] if (
            isinstance(entry.get("function"), dict) and "name" not in entry) else entry
        if "name" not in item:
            return None
        out.append((item["name"], item.get("arguments", item.get("parameters"))))
    return out or None


class JsonValue:
    """Finds where a JSON object or array ends: bracket depth outside strings."""

    __slots__ = ("_depth", "_escape", "_in_string", "_openers", "started")

    def __init__(self, openers: str = "{[") -> None:
        self._openers = openers
        self._depth = 0
        self._in_string = False
        self._escape = False
        self.started = False

    def feed(self, text: str) -> int:
        """Index just after the value's end in ``text``, or -1; :class:`NotACall` if no value."""
        i = 0
        if not self.started:
            while i < len(text) and text[i] in _WS:
                i += 1
            if i == len(text):
                return -1
            if text[i] not in self._openers:
                raise NotACall
            self.started = True
        depth, in_string, escape = self._depth, self._in_string, self._escape
        for j in range(i, len(text)):
            c = text[j]
            if in_string:
                if escape:
                    escape = False
                elif c == "\\":
                    escape = True
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    self._depth, self._in_string, self._escape = 0, False, False
                    return j + 1
        self._depth, self._in_string, self._escape = depth, in_string, escape
        return -1


class _Parts:
    """The text a body consumed, kept as pieces (joined once, at the end)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def text(self) -> str:
        return "".join(self.parts)


class HermesBody:
    """
    ``{…}</tool_call>``: the JSON value, then the close tag.

    The close tag counts only outside JSON strings (arguments may contain it: a file about
    tool calls), or anywhere the JSON is broken. Text after the JSON value that is not the
    close tag ends the call there (:attr:`pushback` then holds the blanks and close-tag
    prefix consumed after it, which are text again).
    """

    CLOSE = "</tool_call>"

    def __init__(self) -> None:
        self._seen = _Parts()
        self._started = False
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._matched = 0
        self._json_end = -1  # where the JSON value ended (in the body), once it did
        self._payload = ""
        self.pushback = ""

    def feed(self, text: str) -> int:
        base = self._seen.length
        self._seen.add(text)
        close = self.CLOSE
        for j, c in enumerate(text):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
                continue
            if self._matched or c == "<":
                if c == close[self._matched]:
                    self._matched += 1
                    if self._matched == len(close):
                        full = self._seen.text()
                        start = base + j + 1 - len(close)
                        self._payload = full[:start if self._json_end < 0 else self._json_end]
                        return j + 1
                    continue
                self._matched = 1 if c == "<" else 0
                if self._matched:
                    continue
            if self._json_end >= 0:
                if c in _WS:
                    continue
                full = self._seen.text()
                self._payload = full[:self._json_end]
                self.pushback = full[self._json_end:base + j]
                return j
            if not self._started:
                if c in _WS:
                    continue
                if c not in "{[":
                    raise NotACall
                self._started = True
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._json_end = base + j + 1
        return -1

    def finish(self) -> bool:
        """
        At the end of the text block: a call without its close tag counts only when its JSON
        value is complete, so a call cut off by ``max_tokens`` is never "repaired" into one
        with half its arguments.
        """
        if self._json_end < 0:
            return False
        self._payload = self._seen.text()[:self._json_end]
        return True

    def calls(self) -> list[RawCall] | None:
        return call_objects(decode_json(self._payload.strip()))


class LlamaBody:
    """``{"name": …, "parameters": …}`` right after ``<|python_tag|>``."""

    pushback = ""

    def __init__(self) -> None:
        self._json = JsonValue("{")
        self._seen = _Parts()

    def feed(self, text: str) -> int:
        end = self._json.feed(text)
        self._seen.add(text if end < 0 else text[:end])
        return end

    def finish(self) -> bool:
        return False

    def calls(self) -> list[RawCall] | None:
        return call_objects(decode_json(self._seen.text().strip()))


class MistralBody:
    """
    ``[{…}, …]`` / ``{…}``, or ``name[ARGS]{…}`` (``name[CALL_ID]id[ARGS]{…}`` too), after
    ``[TOOL_CALLS]``.
    """

    TAGS = ("ARGS", "CALL_ID")
    pushback = ""

    def __init__(self) -> None:
        self._state = "start"  # start → json | name → tag (→ call_id → tag) → json
        self._name: list[str] = []
        self._tag: list[str] = []
        self._json = JsonValue("{[")
        self._seen = _Parts()

    def feed(self, text: str) -> int:
        i = 0
        while i < len(text) and self._state != "json":
            c = text[i]
            if self._state == "start":
                if c in _WS:
                    i += 1
                    continue
                if c in "{[":
                    self._state = "json"
                    break
                if c not in _NAME_CHARS:
                    raise NotACall
                self._state = "name"
            elif self._state in ("name", "call_id"):
                if c in _NAME_CHARS:
                    if self._state == "name":
                        self._name.append(c)
                    i += 1
                    continue
                if c != "[":
                    raise NotACall
                self._state, self._tag = "tag", []
                i += 1
            elif self._state == "tag":
                i += 1
                if c != "]":
                    self._tag.append(c)
                    if not any(t.startswith("".join(self._tag)) for t in self.TAGS):
                        raise NotACall
                    continue
                tag = "".join(self._tag)
                if tag == "ARGS":
                    self._state = "json"
                    self._json = JsonValue("{")
                elif tag == "CALL_ID":
                    self._state = "call_id"
                else:
                    raise NotACall
        if self._state != "json" or i == len(text):
            return -1
        end = self._json.feed(text[i:])
        self._seen.add(text[i:] if end < 0 else text[i:i + end])
        return end if end < 0 else i + end

    def finish(self) -> bool:
        return False

    def calls(self) -> list[RawCall] | None:
        value = decode_json(self._seen.text().strip())
        if self._name:
            return [("".join(self._name), value)] if isinstance(value, dict) else None
        return call_objects(value)


Body = HermesBody | LlamaBody | MistralBody
BODIES: dict[str, Callable[[], Body]] = {
    "hermes": HermesBody, "mistral": MistralBody, "llama": LlamaBody,
}
