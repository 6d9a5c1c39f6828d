"""Identifiers in Anthropic's formats: ``msg_``, ``toolu_``, ``req_`` plus base62 (R-X6)."""

from __future__ import annotations

import re
import secrets

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: What Anthropic accepts as a tool-use id when a conversation is later replayed to it.
TOOL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def base62(length: int = 24) -> str:
    """A random base62 string of ``length`` characters from the system CSPRNG."""
    raw = int.from_bytes(secrets.token_bytes(length), "big")
    chars = []
    for _ in range(length):
        raw, digit = divmod(raw, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def message_id() -> str:
    """A fresh ``msg_…`` id."""
    return "msg_01" + base62(22)


def tool_use_id() -> str:
    """A fresh ``toolu_…`` id."""
    return "toolu_01" + base62(22)


def request_id() -> str:
    """A fresh ``req_…`` id for the ``request-id`` response header."""
    return "req_01" + base62(22)
