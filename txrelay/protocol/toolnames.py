"""
Client tool names ⇄ upstream function names, for any upstream with stricter name rules.

Each upstream kind says which names it accepts and how another name is made legal (a
sanitised prefix plus a hash of the original, so every relay instance agrees);
:class:`ToolNames` maps the legal names back, built from the request alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import ClassVar, Self

import attrs

from txrelay.protocol.anthropic import MessagesRequest

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def hash62(text: str, length: int) -> str:
    """``length`` base62 digits of the SHA-256 of ``text`` (deterministic, not secret)."""
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def _unchanged(name: str) -> str:
    return name


@attrs.frozen
class ToolNames:
    """
    Client tool names ⇄ upstream function names, for one request and its response.

    Built from the request (tools, tool_use history, tool_choice), so request and response
    translation share it and it can be rebuilt at any time. Subclasses set :attr:`legal_name`.
    """

    #: The upstream's name for a client name: unchanged when legal, else a deterministic one.
    legal_name: ClassVar[staticmethod[[str], str]] = staticmethod(_unchanged)

    #: client name → upstream name, only for names that had to change.
    to_upstream: dict[str, str] = attrs.field(factory=dict)
    #: upstream name → client name, the reverse of :attr:`to_upstream`.
    to_client: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Self:
        """A map covering ``names``."""
        forward: dict[str, str] = {}
        for name in names:
            if name not in forward:
                mapped = cls.legal_name(name)
                if mapped != name:
                    forward[name] = mapped
        return cls(forward, {v: k for k, v in forward.items()})

    @classmethod
    def from_request(cls, req: MessagesRequest) -> Self:
        """The map for every tool name ``req`` mentions."""
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
        return self.to_upstream.get(name) or self.legal_name(name)

    def client(self, name: str) -> str:
        """The client name for upstream function ``name`` (unknown names pass through)."""
        return self.to_client.get(name, name)
