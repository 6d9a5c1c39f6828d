"""
OpenAI ``usage`` → Anthropic usage (mapping.md §9.1, R-U1, R-S14).

Chat Completions usage is cumulative and counts cached prompt tokens inside ``prompt_tokens``
(OpenAI, vLLM) or apart from it (DeepSeek's hit/miss counters); Anthropic usage is additive:
``input_tokens`` + ``cache_read_input_tokens`` + ``cache_creation_input_tokens``.
"""

from __future__ import annotations

from typing import Any

from txrelay.protocol.tokens import estimate_text_tokens


def anthropic_usage(
    usage: dict[str, Any] | None, *, input_tokens: int, out_chars: int
) -> dict[str, Any]:
    """
    The ``message_delta`` usage for the upstream's last ``usage`` object.

    :param input_tokens: the local prompt estimate, used when the upstream reported none.
    :param out_chars: characters streamed to the client, for an output estimate.
    """
    if not usage:
        return {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": estimate_text_tokens(out_chars),
        }
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    hit = as_int(usage.get("prompt_cache_hit_tokens"))
    miss = as_int(usage.get("prompt_cache_miss_tokens"))
    prompt = as_int(usage.get("prompt_tokens"))
    cache_read = hit if hit is not None else (as_int(details.get("cached_tokens")) or 0)
    cache_write = as_int(details.get("cache_write_tokens")) or 0
    if hit is not None and miss is not None:
        in_tokens = max(0, miss - cache_write)
    elif prompt is not None:
        in_tokens = max(0, prompt - cache_read - cache_write)
    else:
        in_tokens = input_tokens
    completion = as_int(usage.get("completion_tokens"))
    out: dict[str, Any] = {
        "input_tokens": in_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": (
            completion if completion is not None else estimate_text_tokens(out_chars)
        ),
    }
    completion_details = usage.get("completion_tokens_details")
    if isinstance(completion_details, dict):
        reasoning = as_int(completion_details.get("reasoning_tokens"))
        if reasoning:
            out["output_tokens_details"] = {"thinking_tokens": reasoning}
    return out


#: Token counts above this are not believed (an upstream sending 5,000-digit integers).
_MAX_COUNT = 2**53


def as_int(value: Any) -> int | None:
    """``value`` as a token count: a whole number (not a bool) in 0..2**53, else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= _MAX_COUNT else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= _MAX_COUNT:
        return int(value)
    return None
