"""
Anthropic Messages request → OpenAI Chat Completions request (A→O, mapping.md §2).

:func:`build_chat_request` is pure: the same request and dialect always give the same body,
byte for byte once serialised. That matters for upstream prefix caches: the leading system
message must not change from turn to turn, so the per-request ``x-anthropic-billing-header``
system block Claude Code sends is removed, and a mid-conversation ``role:"system"`` message
(Claude Code puts one right after the first user message) is folded into that user message
rather than into the system prompt.

Deviations from SHOULD rules, with reasons:

- R-O15 (flatten tool history) only for dialects flagged ``needs_tools_for_history``.
- Trailing-assistant prefill is sent as is; vendor continuation flags are left to
  ``extra_body`` (they differ per server and per model).
- OpenRouter: ``thinking`` absent sends no ``reasoning`` object (some OpenRouter models reject
  ``enabled:false`` because they cannot stop reasoning); ``disabled`` sends ``enabled:false``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.openai.dialect import OpenAIDialect
from txrelay.protocol.openai.messages import chat_messages
from txrelay.protocol.openai.signature import ORX_PREFIX, decode_orx, encode_orx
from txrelay.protocol.openai.toolnames import ToolNameMap, mistral_tool_id, upstream_tool_name
from txrelay.protocol.openai.tools import convert_tools

__all__ = [
    "ORX_PREFIX",
    "ToolNameMap",
    "build_chat_request",
    "convert_tools",
    "decode_orx",
    "encode_orx",
    "hashed_user",
    "mistral_tool_id",
    "upstream_tool_name",
]

log = logging.getLogger(__name__)

_EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_THINKING_ON = frozenset({"enabled", "adaptive", "between_tools"})


def _effort_for_budget(budget: Any, dialect: OpenAIDialect) -> str | None:
    if not isinstance(budget, int):
        return None
    if budget < dialect.effort_low_below:
        return "low"
    if budget < dialect.effort_medium_below:
        return "medium"
    return "high"


def _clamp_effort(effort: str, accepted: tuple[str, ...]) -> str | None:
    """``effort`` if accepted, else the strongest accepted value below it, else the weakest."""
    if effort in accepted:
        return effort
    if not accepted:
        return None
    rank = _EFFORT_ORDER.index(effort) if effort in _EFFORT_ORDER else 4
    below = [a for a in accepted if a in _EFFORT_ORDER and _EFFORT_ORDER.index(a) <= rank]
    if below:
        return max(below, key=_EFFORT_ORDER.index)
    return accepted[0]


def _reasoning_controls(req: MessagesRequest, dialect: OpenAIDialect, body: dict[str, Any]) -> None:
    """R-O23: thinking / effort → the reasoning controls the dialect says the model takes."""
    control = dialect.reasoning_control
    if control is None:
        return
    thinking = req.thinking or {}
    kind = thinking.get("type")
    effort = (req.output_config or {}).get("effort")
    effort = effort if isinstance(effort, str) else None
    budget_effort = (
        _effort_for_budget(thinking.get("budget_tokens"), dialect) if kind == "enabled" else None
    )
    on = kind in _THINKING_ON
    if control == "openai":
        wanted = effort or budget_effort
        if kind == "disabled":
            wanted = "none" if "none" in dialect.reasoning_efforts else None
        if wanted:
            clamped = _clamp_effort(wanted, dialect.reasoning_efforts)
            if clamped:
                body["reasoning_effort"] = clamped
    elif control == "deepseek":
        body["thinking"] = {"type": "enabled" if on else "disabled"}
        wanted = effort or budget_effort
        if on and wanted:
            body["reasoning_effort"] = (
                "low"
                if wanted in ("none", "minimal", "low")
                else "max"
                if wanted == "max"
                else "high"
            )
    elif control == "openrouter":
        reasoning: dict[str, Any] = {}
        if effort and kind != "disabled":
            reasoning["effort"] = "xhigh" if effort == "max" else effort
        elif kind == "enabled" and isinstance(thinking.get("budget_tokens"), int):
            reasoning["max_tokens"] = thinking["budget_tokens"]
        elif on:
            reasoning["enabled"] = True
        elif kind == "disabled":
            reasoning["enabled"] = False
        if thinking.get("display") == "omitted" and reasoning.get("enabled") is not False:
            reasoning["exclude"] = True
        if reasoning:
            body["reasoning"] = reasoning
    elif control == "chat_template":
        body["chat_template_kwargs"] = {"enable_thinking": on}


def _tool_choice(
    req: MessagesRequest,
    tools: list[dict[str, Any]],
    dialect: OpenAIDialect,
    names: ToolNameMap,
    body: dict[str, Any],
) -> list[dict[str, Any]]:
    """§2.5; returns the tools actually sent (possibly fewer, possibly none)."""
    choice = req.tool_choice
    kind = choice.get("type") if choice else None
    if not tools:
        return tools
    if kind == "none":
        if not dialect.supports_tool_choice_none:
            return []
        body["tool_choice"] = "none"
    elif kind == "auto" or (kind is None and dialect.explicit_tool_choice_auto):
        body["tool_choice"] = "auto"
    elif kind == "any":
        if dialect.supports_tool_choice_required:
            body["tool_choice"] = "required"
        elif len(tools) == 1:  # one tool: "any" means that tool, which can be forced
            body["tool_choice"] = {
                "type": "function",
                "function": {"name": tools[0]["function"]["name"]},
            }
        else:
            log.info("tool_choice any sent as auto: this upstream ignores \"required\"")
            body["tool_choice"] = "auto"
    elif kind == "tool" and choice is not None:
        name = names.upstream(str(choice.get("name") or ""))
        if dialect.forced_tool_as_required:
            only = [t for t in tools if t["function"]["name"] == name]
            if only:
                tools = only
            body["tool_choice"] = "required"
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": name}}
    if (
        choice
        and choice.get("disable_parallel_tool_use")
        and kind != "none"
        and dialect.supports_parallel_tool_calls
    ):
        body["parallel_tool_calls"] = False  # R-O22
    return tools


def hashed_user(user_id: str) -> str:
    """``metadata.user_id`` as a stable 64-character hex digest (OpenAI's limit)."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def build_chat_request(
    req: MessagesRequest,
    *,
    upstream_model: str,
    dialect: OpenAIDialect,
    max_output_tokens: int | None,
    stream: bool,
    tool_names: ToolNameMap | None = None,
    context_window: int | None = None,
    prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """
    The Chat Completions body for ``req`` (mapping.md §2).

    :param max_output_tokens: the upstream model's output limit; ``max_tokens`` is clamped to
        it (R-O2).
    :param tool_names: the name map (built from ``req`` when not given); pass the same map to
        the response translator.
    :param context_window: with ``prompt_tokens``, also clamp ``max_tokens`` so that prompt +
        output fits (vLLM and llama.cpp reject the request otherwise, Q22).
    :raises RelayError: 400 for content that cannot be sent without changing its meaning
        (image or document ``file_id`` sources, PDFs on a dialect that rejects them).
    """
    names = tool_names if tool_names is not None else ToolNameMap.from_request(req)
    body: dict[str, Any] = {"model": upstream_model}

    tools = convert_tools(req.tools, dialect, names)
    choice_body: dict[str, Any] = {}
    tools = _tool_choice(req, tools, dialect, names, choice_body)
    if "mcp_servers" in req.extra:
        log.warning("dropping mcp_servers: their tools are not available on this upstream")

    messages = chat_messages(
        req, dialect, names, flatten=not tools and dialect.needs_tools_for_history
    )
    body["messages"] = messages

    limit = req.max_tokens if req.max_tokens is not None else max_output_tokens
    if limit is not None:
        if max_output_tokens is not None:
            limit = min(limit, max_output_tokens)
        if context_window is not None and prompt_tokens is not None:
            limit = min(limit, context_window - prompt_tokens)
        body[dialect.max_tokens_field] = max(1, limit)

    body["stream"] = stream
    if stream and dialect.include_usage:
        body["stream_options"] = {"include_usage": True}  # R-O24

    if req.temperature is not None and dialect.supports_temperature:
        body["temperature"] = req.temperature
    if req.top_p is not None and dialect.supports_top_p:
        body["top_p"] = req.top_p
    if req.top_k is not None and dialect.supports_top_k:
        body["top_k"] = req.top_k
    stops = [s for s in req.stop_sequences or () if isinstance(s, str) and s]
    if stops and dialect.supports_stop:
        if len(stops) > dialect.max_stop_sequences:
            log.info("sending only %d of %d stop sequences", dialect.max_stop_sequences, len(stops))
            stops = stops[: dialect.max_stop_sequences]
        if stops:
            body["stop"] = stops

    if tools:
        body["tools"] = tools
        body.update(choice_body)

    _reasoning_controls(req, dialect, body)

    fmt = (req.output_config or {}).get("format")
    if (
        isinstance(fmt, dict)
        and fmt.get("type") == "json_schema"
        and isinstance(fmt.get("schema"), dict)
        and dialect.supports_response_format
    ):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }

    user_id = (req.metadata or {}).get("user_id")
    if dialect.user_field is not None and isinstance(user_id, str) and user_id:
        body[dialect.user_field] = hashed_user(user_id)

    for key, value in dialect.extra_body.items():
        current = body.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            body[key] = {**current, **value}
        else:
            body[key] = value
    return body
