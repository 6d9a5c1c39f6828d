# -*- test-case-name: tests.routing.test_affinity -*-
"""
Which conversation a request belongs to, so that its turns go to the same target and key
and the upstream's prompt cache keeps hitting.

The key is Claude Code's ``X-Claude-Code-Session-Id`` header, else ``metadata.user_id``,
else a hash of the conversation's stable prefix: the system prompt, the tools and the first
user message, which stay the same turn after turn while later messages are appended.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.jsoncodec import dumps

SESSION_HEADER = "x-claude-code-session-id"


def _digest(kind: str, *parts: bytes) -> str:
    h = hashlib.sha256(kind.encode())
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return f"{kind}:{h.hexdigest()[:32]}"


def affinity_key(headers: Mapping[str, str], request: MessagesRequest) -> str | None:
    """
    The conversation key of a request (``headers`` with lower-case names), hashed so that
    client input never becomes a store key as it is. ``None`` when the request has nothing
    stable to go by.
    """
    session = headers.get(SESSION_HEADER, "").strip()
    if session:
        return _digest("session", session.encode("utf-8", "replace"))
    metadata = request.metadata
    if isinstance(metadata, Mapping):
        user = metadata.get("user_id")
        if isinstance(user, str) and user:
            return _digest("user", user.encode("utf-8", "replace"))
    return prefix_key(request)


def _stable(value: Any) -> Any:
    """``value`` without ``cache_control`` markers, which clients move from turn to turn."""
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k != "cache_control"}
    return value


def prefix_key(request: MessagesRequest) -> str | None:
    """The hash of ``system`` + ``tools`` + the first user message, or ``None`` without one."""
    first = next((m for m in request.messages if m.role == "user"), None)
    if first is None:
        return None
    return _digest("prefix", dumps(_stable(request.system)), dumps(_stable(request.tools)),
                   dumps(_stable(first.blocks())))
