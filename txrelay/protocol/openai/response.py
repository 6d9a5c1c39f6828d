"""
Non-streaming Chat Completions response → Anthropic events (O→A, mapping.md §3).

The response is fed through the same :class:`ChatStreamTranslator` as a stream, as one
synthetic chunk, so a streamed and a non-streamed answer can never disagree: the relay's
:class:`~txrelay.protocol.accumulate.MessageAccumulator` folds the events into the Message.
Tool calls use complete-then-emit mode (R-S11): each input is one canonical JSON delta.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.ids import tool_use_id
from txrelay.protocol.jsoncodec import JSONDecodeError, loads
from txrelay.protocol.openai.dialect import OpenAIDialect
from txrelay.protocol.openai.request import ToolNameMap
from txrelay.protocol.openai.stream import ChatStreamTranslator, oai_signature
from txrelay.protocol.structure import json_type_name
from txrelay.protocol.validate import MAX_DEPTH, too_deep_path

_DELTA_FIELDS = ("reasoning_details", "reasoning_content", "reasoning", "content", "refusal")


def parse_chat_response(raw: bytes, *, upstream_name: str = "upstream") -> dict[str, Any]:
    """
    Decode a non-streaming response body; leading whitespace is fine (Q16).

    :raises RelayError: ``api_error`` when the body is not a JSON object.
    """
    text = raw.strip()
    try:
        body = loads(text) if text else None
    except JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        snippet = text[:200].decode("utf-8", "replace")
        raise RelayError(
            "api_error", f"{upstream_name}: upstream sent an invalid response: {snippet}"
        )
    return body


_TEXT_FIELDS = ("reasoning_content", "reasoning", "refusal")


def _shape_problem(body: dict[str, Any]) -> str | None:
    """
    What makes ``body`` something no Chat Completions server sends, in plain words, or
    ``None``. Only the fields the translation reads are checked; ``null`` counts as absent.
    """
    deep = too_deep_path(body)
    if deep is not None:
        return f"it is nested more than {MAX_DEPTH} levels deep"
    choices = body.get("choices")
    if choices is not None and not isinstance(choices, list):
        return f"choices: expected an array, got {json_type_name(choices)}"
    for i, choice in enumerate(choices or ()):
        if not isinstance(choice, dict):
            return f"choices.{i}: expected an object, got {json_type_name(choice)}"
        message = choice.get("message")
        if message is None:
            continue
        if not isinstance(message, dict):
            return f"choices.{i}.message: expected an object, got {json_type_name(message)}"
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            return (f"choices.{i}.message.content: expected a string or an array, "
                    f"got {json_type_name(content)}")
        for key in _TEXT_FIELDS:
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                return f"choices.{i}.message.{key}: expected a string, got {json_type_name(value)}"
        for key in ("tool_calls", "reasoning_details"):
            value = message.get(key)
            if value is not None and not isinstance(value, list):
                return f"choices.{i}.message.{key}: expected an array, got {json_type_name(value)}"
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            return f"choices.{i}.finish_reason: expected a string, got {json_type_name(finish)}"
    usage = body.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return f"usage: expected an object, got {json_type_name(usage)}"
    return None


@functools.lru_cache(maxsize=256)
def _whole_answer(dialect: OpenAIDialect) -> OpenAIDialect:
    """``dialect`` for a whole (non-streamed) answer: tool arguments come complete."""
    return attrs.evolve(dialect, tool_streaming="complete", cumulative_args=False)


def chat_response_events(
    body: dict[str, Any],
    *,
    model: str,
    input_tokens: int,
    dialect: OpenAIDialect,
    stop_sequences: Iterable[str] | None = None,
    tool_names: ToolNameMap | None = None,
    message_id: str | None = None,
    id_factory: Callable[[], str] = tool_use_id,
    signature_factory: Callable[[], str] = oai_signature,
    upstream_name: str = "upstream",
) -> list[Event]:
    """
    The event sequence a stream of ``body`` would produce (without pings).

    Ends with ``message_stop``, or with an ``error`` event when the body reports an error
    (``{"error": …}`` in a 200, ``finish_reason: "error"``); the accumulator raises it.

    :raises RelayError: a 502 ``api_error`` naming the problem when ``body`` has a shape no
        server sends (``choices`` not an array, a message that is not an object, nesting
        beyond :data:`~txrelay.protocol.validate.MAX_DEPTH`).
    Parameters are those of :class:`ChatStreamTranslator`.
    """
    translator = ChatStreamTranslator(
        model=model,
        input_tokens=input_tokens,
        dialect=_whole_answer(dialect),
        stop_sequences=stop_sequences,
        tool_names=tool_names,
        message_id=message_id,
        id_factory=id_factory,
        signature_factory=signature_factory,
        upstream_name=upstream_name,
    )
    out = translator.start(ping=False)
    if body.get("error") or body.get("object") == "error":
        out += translator.process_chunk(body)
        return out
    problem = _shape_problem(body)
    if problem is not None:
        raise RelayError(
            "api_error", f"{upstream_name}: upstream sent an unexpected response: {problem}",
            status=502,
        )
    choice: dict[str, Any] = {}
    for candidate in body.get("choices") or ():
        if isinstance(candidate, dict) and candidate.get("index", 0) in (0, None):
            choice = candidate
            break
    message = choice.get("message") or {}
    delta: dict[str, Any] = {k: message[k] for k in _DELTA_FIELDS if message.get(k)}
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        # Whole calls without indexes: the position is the call (ids may repeat, Q2).
        delta["tool_calls"] = [
            {**c, "index": i} if isinstance(c, dict) else c for i, c in enumerate(calls)
        ]
    elif isinstance(message.get("function_call"), dict):
        delta["function_call"] = message["function_call"]
    synthetic: dict[str, Any] = {
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": choice.get("finish_reason"),
                "stop_reason": choice.get("stop_reason"),
                "matched_stop": choice.get("matched_stop"),
            }
        ],
        "usage": body.get("usage"),
    }
    out += translator.process_chunk(synthetic)
    out += translator.finalize()
    return out
