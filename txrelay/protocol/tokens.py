"""
A local input-token estimator for upstreams without a counting endpoint (R-C1).

Roughly four characters a token over the text a model would read, plus a few tokens of
framing per message and a flat cost per image. It errs high: an over-estimate makes Claude
Code compact a little early, an under-estimate lets a conversation overflow.
"""

from __future__ import annotations

from typing import Any

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.jsoncodec import dumps

_CHARS_PER_TOKEN = 3.6
_PER_MESSAGE = 4
_PER_IMAGE = 1600
_PER_DOCUMENT_PAGE_GUESS = 1500


def _block_chars(block: dict[str, Any]) -> tuple[int, int]:
    """(characters, flat tokens) one content block contributes."""
    kind = block.get("type")
    if kind == "text":
        return len(block.get("text") or ""), 0
    if kind == "thinking":
        return len(block.get("thinking") or ""), 0
    if kind == "image":
        return 0, _PER_IMAGE
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "text":
            return len(source.get("data") or ""), 0
        return 0, _PER_DOCUMENT_PAGE_GUESS
    if kind == "tool_use":
        return len(block.get("name") or "") + len(dumps(block.get("input") or {})), 0
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return len(content), 0
        chars = flat = 0
        for inner in content or ():
            if isinstance(inner, dict):
                c, f = _block_chars(inner)
                chars, flat = chars + c, flat + f
        return chars, flat
    return len(dumps(block)), 0


def estimate_input_tokens(req: MessagesRequest) -> int:
    """Estimated prompt tokens of ``req``: system, messages and tool definitions."""
    chars = len(req.system_text())
    flat = 0
    for msg in req.messages:
        flat += _PER_MESSAGE
        if isinstance(msg.content, str):
            chars += len(msg.content)
            continue
        for block in msg.content:
            c, f = _block_chars(block)
            chars += c
            flat += f
    if req.tools:
        chars += len(dumps(req.tools))
    return max(1, int(chars / _CHARS_PER_TOKEN + 0.999) + flat)


def estimate_text_tokens(text_chars: int) -> int:
    """Estimated output tokens for ``text_chars`` characters generated (R-S14)."""
    return max(1, -(-text_chars // 4)) if text_chars else 0
