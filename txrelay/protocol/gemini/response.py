"""
A non-streaming Gemini ``generateContent`` response → Anthropic events (G→A, mapping.md §6).

The body goes through the same :class:`~txrelay.protocol.gemini.stream.GeminiStreamTranslator`
as a stream, as one whole chunk, so a streamed and a non-streamed answer can never disagree;
the relay's :class:`~txrelay.protocol.accumulate.MessageAccumulator` folds the events into the
Message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.gemini import signatures as sigs
from txrelay.protocol.gemini.names import GeminiToolNames
from txrelay.protocol.gemini.stream import GeminiStreamTranslator
from txrelay.protocol.jsoncodec import JSONDecodeError, loads


def parse_gemini_response(raw: bytes, *, upstream_name: str = "gemini") -> Any:
    """
    Decode a non-streaming body (an object, or the JSON array ``streamGenerateContent``
    returns without ``alt=sse``).

    :raises RelayError: ``api_error`` when the body is not JSON.
    """
    text = raw.strip()
    try:
        body = loads(text) if text else None
    except JSONDecodeError:
        body = None
    if not isinstance(body, (dict, list)):
        snippet = text[:200].decode("utf-8", "replace")
        raise RelayError(
            "api_error", f"{upstream_name}: upstream sent an invalid response: {snippet}"
        )
    return body


def gemini_response_events(
    body: Any,
    *,
    model: str,
    input_tokens: int,
    tool_names: GeminiToolNames | None = None,
    message_id: str | None = None,
    upstream_name: str = "gemini",
    upstream_model: str = "",
    signature_scope: str | None = None,
    signature_factory: Callable[[], str] = sigs.unsigned_thought,
) -> list[Event]:
    """
    The event sequence a stream of ``body`` would produce (without pings).

    Ends with ``message_stop``, or with an ``error`` event when the body reports one; the
    accumulator raises it. Parameters are those of :class:`GeminiStreamTranslator`.
    """
    translator = GeminiStreamTranslator(
        model=model,
        input_tokens=input_tokens,
        tool_names=tool_names,
        message_id=message_id,
        upstream_name=upstream_name,
        upstream_model=upstream_model,
        signature_scope=signature_scope,
        signature_factory=signature_factory,
    )
    translator.process_response(body)  # held until start(): message_start gets real usage
    out = translator.start(ping=False)
    out += translator.finalize()
    return out
