"""
Tool names as the upstream sees them (R-O18) and Mistral-style tool-call ids (R-X12).

OpenAI accepts function names of 1 to 64 characters from ``[a-zA-Z0-9_-]``; any other client name
is sent as a sanitised prefix plus a hash of the original, and :class:`ToolNameMap` maps it back.
"""

from __future__ import annotations

import re

import attrs

from txrelay.protocol.toolnames import ToolNames, hash62

_VALID_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


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
class ToolNameMap(ToolNames):
    """Client tool names ⇄ OpenAI function names (R-O18)."""

    legal_name = staticmethod(upstream_tool_name)
