"""
The Gemini backend's sans-IO core (AI Studio and Vertex AI share the wire format).

Public surface for the transport:

- :func:`build_generate_request` — Anthropic request → ``generateContent`` /
  ``streamGenerateContent`` body (mapping.md §5).
- :class:`GeminiToolNames` — client tool names ⇄ legal Gemini function names; build it once
  per request (:meth:`GeminiToolNames.from_request`) and give it to both directions.
- :class:`GeminiStreamTranslator` — ``streamGenerateContent?alt=sse`` bytes → Anthropic
  events; implements :class:`~txrelay.protocol.translator.StreamTranslator` (``start``,
  ``feed``, ``finish``, ``done``, ``finish_seen``, ``error``).
- :func:`gemini_response_events` (with :func:`parse_gemini_response`) — a non-streaming
  ``generateContent`` body → the same events.
- :func:`gemini_error` / :func:`gemini_stream_error` — Gemini errors → :class:`RelayError`
  (§11.3); :func:`is_signature_rejection` says when to retry once with
  ``build_generate_request(..., replay_signatures=False)`` (R-G10.3).
- :func:`build_count_tokens_request` / :func:`count_tokens_result` — ``countTokens`` (R-C1).
- :func:`clean_schema` — JSON Schema → the allow-listed OpenAPI subset Gemini accepts.
- :data:`signatures.PLACEHOLDER` and the ``txr1.gem.*`` signature carriers (§10).

Give the request builder and the translators the same ``upstream_model`` (or
``signature_scope``): thought signatures are only replayed to the scope that issued them.
"""

from __future__ import annotations

from typing import Any

from txrelay.protocol.errors import RelayError
from txrelay.protocol.gemini import signatures
from txrelay.protocol.gemini.errors import (
    gemini_error,
    gemini_stream_error,
    is_signature_rejection,
)
from txrelay.protocol.gemini.names import GeminiToolNames
from txrelay.protocol.gemini.request import (
    build_count_tokens_request,
    build_generate_request,
    thinking_style_for,
)
from txrelay.protocol.gemini.response import gemini_response_events, parse_gemini_response
from txrelay.protocol.gemini.schema import clean_schema
from txrelay.protocol.gemini.stream import GeminiStreamTranslator


def count_tokens_result(body: Any, *, upstream_name: str = "gemini") -> int:
    """``totalTokens`` of a ``countTokens`` answer (decoded JSON or raw bytes)."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = parse_gemini_response(bytes(body), upstream_name=upstream_name)
        except RelayError:
            body = None
    total = body.get("totalTokens") if isinstance(body, dict) else None
    if isinstance(total, str) and total.isdigit():
        total = int(total)
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    if isinstance(body, dict) and total is None and not body.get("error"):
        return 0  # proto-JSON omits zero values
    raise RelayError("api_error", f"{upstream_name}: countTokens answered without totalTokens")


__all__ = [
    "GeminiStreamTranslator",
    "GeminiToolNames",
    "build_count_tokens_request",
    "build_generate_request",
    "clean_schema",
    "count_tokens_result",
    "gemini_error",
    "gemini_response_events",
    "gemini_stream_error",
    "is_signature_rejection",
    "parse_gemini_response",
    "signatures",
    "thinking_style_for",
]
