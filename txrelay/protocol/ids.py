"""Identifiers in Anthropic's formats: ``msg_``, ``toolu_``, ``req_`` plus base62 (R-X6)."""

from __future__ import annotations

import os
import re

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: What Anthropic accepts as a tool-use id when a conversation is later replayed to it.
TOOL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# Byte → base62 digit. ``b % 62`` favours the first eight digits very slightly (by 1/256),
# which is irrelevant for identifiers; the bytes come from the system CSPRNG.
_TABLE = bytes(ord(_BASE62[b % 62]) for b in range(256))


def base62(length: int = 24) -> str:
    """A random base62 string of ``length`` characters (≈5.95 bits each)."""
    return os.urandom(length).translate(_TABLE).decode("ascii")


def message_id() -> str:
    """A fresh ``msg_…`` id."""
    return "msg_01" + base62(22)


def tool_use_id() -> str:
    """A fresh ``toolu_…`` id."""
    return "toolu_01" + base62(22)


def request_id() -> str:
    """A fresh ``req_…`` id for the ``request-id`` response header."""
    return "req_01" + base62(22)
