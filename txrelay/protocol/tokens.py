"""
A local input-token estimator for upstreams without a counting endpoint (R-C1).

Roughly four characters a token over the text a model would read, plus a few tokens of
framing per message and a flat cost per image. It errs high: an over-estimate makes Claude
Code compact a little early, an under-estimate lets a conversation overflow.
"""

from __future__ import annotations

from typing import Any

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.jsoncodec import JSONEncodeError, dumps
from txrelay.protocol.validate import validated_tools_length

_CHARS_PER_TOKEN = 3.6
_PER_MESSAGE = 4
_PER_IMAGE = 1600
_PER_DOCUMENT_PAGE_GUESS = 1500


def _str_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _json_len(value: Any) -> int:
    try:
        return len(dumps(value))
    except JSONEncodeError:
        return 0  # a stage built something unwritable; the translator will say so


def _block_chars(block: dict[str, Any]) -> tuple[int, int]:
    """
    (characters, flat tokens) one content block contributes.

    Requests are validated (:mod:`txrelay.protocol.validate`), but a stage may build one by
    hand: a field of the wrong type counts as nothing rather than failing.
    """
    kind = block.get("type")
    if kind == "text":
        return _str_len(block.get("text")), 0
    if kind == "thinking":
        return _str_len(block.get("thinking")), 0
    if kind == "image":
        return 0, _PER_IMAGE
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return _str_len(source.get("data")), 0
        return 0, _PER_DOCUMENT_PAGE_GUESS
    if kind == "tool_use":
        return _str_len(block.get("name")) + _json_len(block.get("input") or {}), 0
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return len(content), 0
        chars = flat = 0
        for inner in content if isinstance(content, list) else ():
            if isinstance(inner, dict):
                c, f = _block_chars(inner)
                chars, flat = chars + c, flat + f
        return chars, flat
    return _json_len(block), 0


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
            if not isinstance(block, dict):
                continue
            c, f = _block_chars(block)
            chars += c
            flat += f
    if req.tools:
        # Validation wrote the client's tools already (its nesting check).
        known = validated_tools_length(req.tools)
        chars += _json_len(req.tools) if known is None else known
    return max(1, int(chars / _CHARS_PER_TOKEN + 0.999) + flat)


def estimate_text_tokens(text_chars: int) -> int:
    """Estimated output tokens for ``text_chars`` characters generated (R-S14)."""
    return max(1, -(-text_chars // 4)) if text_chars else 0
