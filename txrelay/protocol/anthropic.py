"""
The Anthropic Messages API request, as the relay's front end accepts it.

Top-level fields are typed and checked exactly (a wrong type is a 400 naming the field);
content blocks, tool schemas and other open-ended values stay JSON objects, checked for the
shape every translator relies on. Unknown top-level fields are kept in ``extra`` rather than
rejected (R-X3): Claude Code adds beta fields often, and pass-through forwards them.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from cattrs.errors import ClassValidationError

from txrelay.protocol.errors import invalid_request
from txrelay.protocol.jsoncodec import JSONDecodeError, loads
from txrelay.protocol.structure import dotted, error_lines, json_type_name, make_converter

Content = str | list[dict[str, Any]]

TOOL_CHOICE_TYPES = frozenset({"auto", "any", "tool", "none"})
THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive", "between_tools"})


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
            b["text"] for b in self.system if b.get("type") == "text" and b.get("text")
        )

    def tool_names(self) -> list[str]:
        """Names of the offered tools, in order."""
        return [t["name"] for t in self.tools or () if isinstance(t.get("name"), str)]

    def thinking_enabled(self) -> bool:
        """Whether the client asked for thinking (enabled or adaptive)."""
        return self.thinking is not None and self.thinking.get("type") in ("enabled", "adaptive")


_FIELDS = frozenset(a.name for a in attrs.fields(MessagesRequest)) - {"extra"}
_converter = make_converter(forbid_extra_keys=False)


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
    """Structure a decoded body into a :class:`MessagesRequest` (see :func:`parse_request`)."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in body.items():
        (known if k in _FIELDS else extra)[k] = v
    if count_tokens:
        known.pop("max_tokens", None)
        known.pop("stream", None)
    elif "max_tokens" not in known:
        raise invalid_request("max_tokens: field required")
    known["extra"] = extra
    try:
        req = _converter.structure(known, MessagesRequest)
    except (ClassValidationError, TypeError, ValueError) as e:
        problems = "; ".join(
            f"{dotted(path)}: {msg}" if path else msg for path, msg in error_lines(e)
        )
        raise invalid_request(problems) from None
    _check_semantics(req)
    return req


def _check_semantics(req: MessagesRequest) -> None:
    problems: list[str] = []
    if req.max_tokens is not None and req.max_tokens < 0:
        problems.append("max_tokens: must be greater than or equal to 0")
    if not req.model:
        problems.append("model: must not be empty")
    if not req.messages:
        problems.append("messages: at least one message is required")
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, list):
            for j, block in enumerate(msg.content):
                if not isinstance(block.get("type"), str):
                    problems.append(f"messages.{i}.content.{j}.type: field required")
    if isinstance(req.system, list):
        for j, block in enumerate(req.system):
            if block.get("type") != "text" or not isinstance(block.get("text"), str):
                problems.append(f"system.{j}: expected a text block")
    for i, tool in enumerate(req.tools or ()):
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            problems.append(f"tools.{i}.name: field required")
        schema = tool.get("input_schema")
        if tool.get("type") in (None, "custom") and not isinstance(schema, dict):
            problems.append(f"tools.{i}.input_schema: field required")
    if req.tool_choice is not None:
        kind = req.tool_choice.get("type")
        if kind not in TOOL_CHOICE_TYPES:
            problems.append(
                f"tool_choice.type: expected one of auto, any, tool, none, got {kind!r}"
            )
        elif kind == "tool" and not isinstance(req.tool_choice.get("name"), str):
            problems.append("tool_choice.name: field required")
    if req.thinking is not None:
        kind = req.thinking.get("type")
        if kind not in THINKING_TYPES:
            problems.append(f"thinking.type: unknown thinking type {kind!r}")
        elif kind == "enabled" and not isinstance(req.thinking.get("budget_tokens"), int):
            problems.append("thinking.budget_tokens: field required")
    if problems:
        raise invalid_request("; ".join(problems))
