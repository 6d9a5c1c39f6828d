"""
The relay's thinking signatures (mapping.md §10.1).

A thinking block from an OpenAI-compatible upstream has no Anthropic signature, so the relay
mints one (``txr1.oai.…``, R-S5). OpenRouter reasoning items carry data the upstream wants
back on the next turn; they travel inside the signature (or ``redacted_thinking.data``) as
``txr1.orx.`` + base64url JSON and are decoded when the client replays the block.
"""

from __future__ import annotations

import base64
from typing import Any

from txrelay.protocol.ids import base62
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps_str, loads

ORX_PREFIX = "txr1.orx."


def oai_signature() -> str:
    """A fresh relay signature for reasoning without an upstream signature (§10.1)."""
    return "txr1.oai." + base62(24)


def encode_orx(item: dict[str, Any]) -> str:
    """Relay signature carrying an OpenRouter reasoning item (mapping.md §10.1)."""
    raw = dumps_str(item).encode("utf-8")
    return ORX_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_orx(value: str) -> dict[str, Any] | None:
    """The item inside a ``txr1.orx.`` signature/data, or ``None`` when it is not one."""
    if not value.startswith(ORX_PREFIX):
        return None
    payload = value[len(ORX_PREFIX) :]
    try:
        item = loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (JSONDecodeError, ValueError):
        return None
    return item if isinstance(item, dict) else None
