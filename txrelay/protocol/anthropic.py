"""
The Anthropic Messages API request, as the relay's front end accepts it.

The body is checked against the Messages schema by :mod:`txrelay.protocol.validate` (a
wrong shape anywhere is a 400 naming its path) before it becomes a :class:`MessagesRequest`;
content blocks, tool schemas and other open-ended values stay JSON objects, of the shapes the
validator guarantees. Unknown top-level fields are kept in ``extra`` rather than rejected
(R-X3): Claude Code adds beta fields often, and pass-through forwards them.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from txrelay.protocol.errors import invalid_request
from txrelay.protocol.jsoncodec import JSONDecodeError, loads
from txrelay.protocol.structure import json_type_name
from txrelay.protocol.validate import THINKING_TYPES, TOOL_CHOICE_TYPES, validate_request

Content = str | list[dict[str, Any]]

__all__ = [
    "THINKING_TYPES", "TOOL_CHOICE_TYPES", "InputMessage", "MessagesRequest",
    "parse_request", "request_from_json",
]


@attrs.frozen
class InputMessage:
    """One entry of ``messages``; ``content`` is a string or a list of block objects."""

    role: Literal["user", "assistant", "system"]
    content: Content

    def blocks(self) -> list[dict[str, Any]]:
        """The content as a block list (a string is one text block)."""
        if isinstance(self.content, str):
            return [{"type": "text", "text": self.content}]
        return self.content


@attrs.frozen
class MessagesRequest:
    """
    A ``POST /v1/messages`` (or ``count_tokens``) body.

    ``max_tokens`` is ``None`` only for ``count_tokens``, where it is not part of the body.
    """

    model: str
    messages: list[InputMessage]
    max_tokens: int | None = None
    system: Content | None = None
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    #: Top-level fields the relay does not model, verbatim.
    extra: dict[str, Any] = attrs.field(factory=dict)

    def system_text(self) -> str:
        """The system prompt's text blocks joined with blank lines (R-O3)."""
        if self.system is None:
            return ""
        if isinstance(self.system, str):
            return self.system
        return "\n\n".join(
            b["text"] for b in self.system
            if b.get("type") == "text" and isinstance(b.get("text"), str) and b["text"]
        )

    def tool_names(self) -> list[str]:
        """Names of the offered tools, in order."""
        return [t["name"] for t in self.tools or () if isinstance(t.get("name"), str)]

    def thinking_enabled(self) -> bool:
        """Whether the client asked for thinking (enabled or adaptive)."""
        return self.thinking is not None and self.thinking.get("type") in ("enabled", "adaptive")


_FIELDS = frozenset(a.name for a in attrs.fields(MessagesRequest)) - {"extra"}


def parse_request(raw: bytes, *, count_tokens: bool = False) -> MessagesRequest:
    """
    Parse and check a request body; raise a 400 :class:`RelayError` naming what is wrong.

    :param raw: the body bytes as received.
    :param count_tokens: parse a ``count_tokens`` body (no ``max_tokens`` required).
    """
    try:
        body = loads(raw) if raw.strip() else None
    except JSONDecodeError as e:
        raise invalid_request(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise invalid_request(
            f"request body must be a JSON object, got {json_type_name(body)}"
            if body is not None
            else "request body is empty; expected a JSON object"
        )
    return request_from_json(body, count_tokens=count_tokens)


def request_from_json(body: dict[str, Any], *, count_tokens: bool = False) -> MessagesRequest:
    """
    Check a decoded body with :func:`~txrelay.protocol.validate.validate_request` and build
    the :class:`MessagesRequest` (see :func:`parse_request`).
    """
    validate_request(body, count_tokens=count_tokens)
    extra = {k: v for k, v in body.items() if k not in _FIELDS}
    get = body.get
    return MessagesRequest(
        model=body["model"],
        messages=[InputMessage(m["role"], m["content"]) for m in body["messages"]],
        max_tokens=None if count_tokens else body["max_tokens"],
        system=get("system"),
        stream=False if count_tokens else bool(get("stream")),
        stop_sequences=get("stop_sequences"),
        temperature=_float_or_none(get("temperature")),
        top_p=_float_or_none(get("top_p")),
        top_k=get("top_k"),
        tools=get("tools"),
        tool_choice=get("tool_choice"),
        thinking=get("thinking"),
        metadata=get("metadata"),
        output_config=get("output_config"),
        extra=extra,
    )


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
