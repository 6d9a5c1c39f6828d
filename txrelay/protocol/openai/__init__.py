"""
The OpenAI Chat Completions backend's sans-IO core: request building (A→O), stream and
response translation (O→A), upstream error mapping, and the per-upstream dialect switches.
"""

from __future__ import annotations

from txrelay.protocol.errors import connection_error
from txrelay.protocol.openai.dialect import PRESETS, OpenAIDialect
from txrelay.protocol.openai.errors import (
    parse_problem,
    stream_error,
    timeout_error,
    upstream_error,
)
from txrelay.protocol.openai.request import ToolNameMap, build_chat_request
from txrelay.protocol.openai.response import chat_response_events, parse_chat_response
from txrelay.protocol.openai.stream import ChatStreamTranslator, oai_signature

__all__ = [
    "PRESETS",
    "ChatStreamTranslator",
    "OpenAIDialect",
    "ToolNameMap",
    "build_chat_request",
    "chat_response_events",
    "connection_error",
    "oai_signature",
    "parse_chat_response",
    "parse_problem",
    "stream_error",
    "timeout_error",
    "upstream_error",
]
