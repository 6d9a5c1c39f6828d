"""
Client tool names ⇄ Gemini function names.

Gemini accepts ``[A-Za-z_][A-Za-z0-9_.:-]*`` up to 64 characters (the service's error text
says 64; some documentation says 128). Any other name is replaced by a sanitised prefix plus a
hash of the original, so the mapping is deterministic (every relay instance agrees) and is
reversed on the way back through the map built from the same request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import attrs

from txrelay.protocol.anthropic import MessagesRequest

MAX_NAME = 64
_VALID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def hash62(text: str, length: int) -> str:
    """``length`` base62 digits of the SHA-256 of ``text`` (deterministic, not secret)."""
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def gemini_function_name(name: str) -> str:
    """The name Gemini gets for client tool ``name``: unchanged when legal, else hashed."""
    if _VALID.match(name):
        return name
    clean = _INVALID_CHARS.sub("_", name)
    if not clean or not (clean[0].isalpha() or clean[0] == "_"):
        clean = "_" + clean
    return f"{clean[: MAX_NAME - 11]}_{hash62(name, 10)}"


@attrs.frozen
class GeminiToolNames:
    """
    Client tool names ⇄ Gemini function names, for one request and its response.

    Built from the request (tools, tool_use history, tool_choice), so it can be rebuilt at any
    time; pass the same map to :func:`build_generate_request` and the response translators.
    """

    #: client name → Gemini name, only for names that had to change.
    to_upstream: dict[str, str] = attrs.field(factory=dict)
    #: Gemini name → client name.
    to_client: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> GeminiToolNames:
        """A map covering ``names``."""
        forward: dict[str, str] = {}
        for name in names:
            if name not in forward:
                mapped = gemini_function_name(name)
                if mapped != name:
                    forward[name] = mapped
        return cls(forward, {v: k for k, v in forward.items()})

    @classmethod
    def from_request(cls, req: MessagesRequest) -> GeminiToolNames:
        """The map for every tool name ``req`` mentions."""
        names = req.tool_names()
        if req.tool_choice and isinstance(req.tool_choice.get("name"), str):
            names.append(req.tool_choice["name"])
        for msg in req.messages:
            if msg.role == "assistant" and isinstance(msg.content, list):
                for block in msg.content:
                    if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                        names.append(block["name"])
        return cls.from_names(names)

    def upstream(self, name: str) -> str:
        """The Gemini name for client tool ``name``."""
        return self.to_upstream.get(name) or gemini_function_name(name)

    def client(self, name: str) -> str:
        """The client name for Gemini function ``name`` (unknown names pass through)."""
        return self.to_client.get(name, name)
