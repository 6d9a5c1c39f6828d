"""
Client tool names ⇄ Gemini function names.

Gemini accepts ``[A-Za-z_][A-Za-z0-9_.:-]*`` up to 64 characters (the service's error text
says 64; some documentation says 128). Any other name is replaced by a sanitised prefix plus a
hash of the original, so the mapping is deterministic (every relay instance agrees) and is
reversed on the way back through the map built from the same request.
"""

from __future__ import annotations

import re

import attrs

from txrelay.protocol.toolnames import ToolNames, hash62

MAX_NAME = 64
_VALID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


def gemini_function_name(name: str) -> str:
    """The name Gemini gets for client tool ``name``: unchanged when legal, else hashed."""
    if _VALID.match(name):
        return name
    clean = _INVALID_CHARS.sub("_", name)
    if not clean or not (clean[0].isalpha() or clean[0] == "_"):
        clean = "_" + clean
    return f"{clean[: MAX_NAME - 11]}_{hash62(name, 10)}"


@attrs.frozen
class GeminiToolNames(ToolNames):
    """
    Client tool names ⇄ Gemini function names, for one request and its response.

    Built from the request (tools, tool_use history, tool_choice), so it can be rebuilt at any
    time; pass the same map to :func:`build_generate_request` and the response translators.
    """

    legal_name = staticmethod(gemini_function_name)
