"""
Tool-use ids that are legal and unique, derived from the conversation itself.

Anthropic requires ids matching ``^[a-zA-Z0-9_-]+$`` and unique within a conversation. Weak
backends (and the clients replaying their answers) produce duplicates, empty ids or ids with
dots and colons. A replacement is a hash of where the block sits (message index, block index)
and the id it replaces, so every relay instance, on every turn, maps the same history the same
way, and a tool_result follows its tool_use without any state kept between requests
(mapping.md R-X11 mints fresh random ids for the upstream's calls; these are for the ids a
client already holds, and for calls made out of text).
"""

from __future__ import annotations

import hashlib

from txrelay.protocol.ids import TOOL_ID_PATTERN

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TABLE = bytes(ord(_BASE62[b % 62]) for b in range(256))


def is_legal_id(tool_id: object) -> bool:
    """Whether ``tool_id`` is a string Anthropic accepts as a tool-use id."""
    return isinstance(tool_id, str) and TOOL_ID_PATTERN.match(tool_id) is not None


def derived_id(message_index: int, block_index: int, original: str = "") -> str:
    """
    The id for the tool_use block ``block_index`` of message ``message_index`` whose id was
    ``original`` (``""`` for a call the relay made out of text): ``toolu_01`` + 22 base62
    characters of a SHA-256 of the three, the shape Anthropic's own ids have.
    """
    digest = hashlib.sha256(f"{message_index}:{block_index}:{original}".encode()).digest()
    return "toolu_01" + digest[:22].translate(_TABLE).decode("ascii")
