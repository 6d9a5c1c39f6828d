"""
Tool names as the upstream sees them (R-O18) and Mistral-style tool-call ids (R-X12).

OpenAI accepts function names of 1 to 64 characters from ``[a-zA-Z0-9_-]``; any other client name
is sent as a sanitised prefix plus a hash of the original, and :class:`ToolNameMap` maps it back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import attrs

from txrelay.protocol.anthropic import MessagesRequest

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALID_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def hash62(text: str, length: int) -> str:
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def upstream_tool_name(name: str) -> str:
    """
    The name a tool gets upstream (R-O18): unchanged when OpenAI accepts it, else a
    deterministic sanitised prefix plus a hash of the original (so it reverses via a map).
    """
    if _VALID_TOOL_NAME.match(name):
        return name
    clean = _INVALID_NAME_CHARS.sub("_", name)[:54] or "tool"
    return f"{clean}_{hash62(name, 9)}"


def mistral_tool_id(tool_id: str) -> str:
    """Mistral-style id: exactly 9 alphanumerics, derived deterministically (R-X12, Q21)."""
    return hash62(tool_id, 9)


@attrs.frozen
class ToolNameMap:
    """
    Client tool names ⇄ upstream function names (R-O18).

    Built from the request (tools, tool_use history, tool_choice); request and stream
    translation use the same map, and it can be rebuilt from the request at any time.
    """

    #: client name → upstream name, only for names that had to change.
    to_upstream: dict[str, str] = attrs.field(factory=dict)
    #: upstream name → client name, the reverse of :attr:`to_upstream`.
    to_client: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ToolNameMap:
        """A map covering ``names``."""
        forward: dict[str, str] = {}
        for name in names:
            if name not in forward:
                mapped = upstream_tool_name(name)
                if mapped != name:
                    forward[name] = mapped
        return cls(forward, {v: k for k, v in forward.items()})

    @classmethod
    def from_request(cls, req: MessagesRequest) -> ToolNameMap:
        """The map for every tool name in ``req``."""
        names: list[str] = [t["name"] for t in req.tools or () if isinstance(t.get("name"), str)]
        if req.tool_choice and isinstance(req.tool_choice.get("name"), str):
            names.append(req.tool_choice["name"])
        for msg in req.messages:
            if msg.role == "assistant" and isinstance(msg.content, list):
                for block in msg.content:
                    if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                        names.append(block["name"])
        return cls.from_names(names)

    def upstream(self, name: str) -> str:
        """The upstream name for client tool ``name``."""
        return self.to_upstream.get(name) or upstream_tool_name(name)

    def client(self, name: str) -> str:
        """The client name for upstream function ``name`` (unknown names pass through)."""
        return self.to_client.get(name, name)
