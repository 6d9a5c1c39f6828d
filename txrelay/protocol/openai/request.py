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

import base64
import hashlib
import logging
import re
from collections.abc import Iterable
from typing import Any

import attrs

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import invalid_request
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps_str, loads
from txrelay.protocol.openai.dialect import OpenAIDialect

log = logging.getLogger(__name__)

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
ORX_PREFIX = "txr1.orx."
IMAGE_MARKER = "[image attached in the next message]"
NO_RESULT = "(no result)"

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALID_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_THINKING_ON = frozenset({"enabled", "adaptive", "between_tools"})
_CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "memory_", "computer_")
_DROPPED_TOOL_KEYS = ("cache_control", "input_examples", "defer_loading", "allowed_callers")


def _hash62(text: str, length: int) -> str:
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def upstream_tool_name(name: str) -> str:
    """
    The name a tool gets upstream (R-O18): unchanged when OpenAI accepts it, else a
    deterministic sanitised prefix plus a hash of the original (so it reverses via a map).
    """
    if _VALID_TOOL_NAME.match(name):
        return name
    clean = _INVALID_NAME_CHARS.sub("_", name)[:54] or "tool"
    return f"{clean}_{_hash62(name, 9)}"


def mistral_tool_id(tool_id: str) -> str:
    """Mistral-style id: exactly 9 alphanumerics, derived deterministically (R-X12, Q21)."""
    return _hash62(tool_id, 9)


@attrs.frozen
class ToolNameMap:
    """
    Client tool names ⇄ upstream function names (R-O18).

    Built from the request (tools, tool_use history, tool_choice); request and stream
    translation use the same map, and it can be rebuilt from the request at any time.
    """

    #: client name → upstream name, only for names that had to change.
    to_upstream: dict[str, str] = attrs.field(factory=dict)
    #: upstream name → client name, the reverse of :attr:`to_upstream`.
    to_client: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ToolNameMap:
        """A map covering ``names``."""
        forward: dict[str, str] = {}
        for name in names:
            if name not in forward:
                mapped = upstream_tool_name(name)
                if mapped != name:
                    forward[name] = mapped
        return cls(forward, {v: k for k, v in forward.items()})

    @classmethod
    def from_request(cls, req: MessagesRequest) -> ToolNameMap:
        """The map for every tool name in ``req``."""
        names: list[str] = [t["name"] for t in req.tools or () if isinstance(t.get("name"), str)]
        if req.tool_choice and isinstance(req.tool_choice.get("name"), str):
            names.append(req.tool_choice["name"])
        for msg in req.messages:
            if msg.role == "assistant" and isinstance(msg.content, list):
                for block in msg.content:
                    if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                        names.append(block["name"])
        return cls.from_names(names)

    def upstream(self, name: str) -> str:
        """The upstream name for client tool ``name``."""
        return self.to_upstream.get(name) or upstream_tool_name(name)

    def client(self, name: str) -> str:
        """The client name for upstream function ``name`` (unknown names pass through)."""
        return self.to_client.get(name, name)


def encode_orx(item: dict[str, Any]) -> str:
    """Relay signature carrying an OpenRouter reasoning item (mapping.md §10.1)."""
    raw = dumps_str(item).encode("utf-8")
    return ORX_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_orx(value: str) -> dict[str, Any] | None:
    """The item inside a ``txr1.orx.`` signature/data, or ``None`` when it is not one."""
    if not value.startswith(ORX_PREFIX):
        return None
    payload = value[len(ORX_PREFIX) :]
    try:
        item = loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (JSONDecodeError, ValueError):
        return None
    return item if isinstance(item, dict) else None


# --- Anthropic-defined client tools (R-O19) ------------------------------------------------

_STR = {"type": "string"}
_INT = {"type": "integer"}
_EDITOR_PROPS: dict[str, Any] = {
    "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"]},
    "path": {"type": "string", "description": "Absolute path to the file or directory."},
    "file_text": _STR,
    "old_str": _STR,
    "new_str": _STR,
    "insert_line": _INT,
    "insert_text": _STR,
    "view_range": {"type": "array", "items": _INT},
}
_CLIENT_TOOL_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash_": (
        "Run a shell command in a persistent bash session.",
        {
            "type": "object",
            "properties": {"command": _STR, "restart": {"type": "boolean"}},
        },
    ),
    "text_editor_": (
        "View, create and edit files.",
        {"type": "object", "properties": _EDITOR_PROPS, "required": ["command", "path"]},
    ),
    "memory_": (
        "Read and write files in the /memories directory.",
        {
            "type": "object",
            "properties": {
                **_EDITOR_PROPS,
                "command": {
                    "type": "string",
                    "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
                },
                "old_path": _STR,
                "new_path": _STR,
            },
            "required": ["command"],
        },
    ),
    "computer_": (
        "Control the computer's screen, keyboard and mouse.",
        {
            "type": "object",
            "properties": {
                "action": _STR,
                "coordinate": {"type": "array", "items": _INT},
                "start_coordinate": {"type": "array", "items": _INT},
                "text": _STR,
                "scroll_direction": _STR,
                "scroll_amount": _INT,
                "duration": {"type": "number"},
                "key": _STR,
                "region": {"type": "array", "items": _INT},
            },
            "required": ["action"],
        },
    ),
}


def _function_tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": schema},
    }


def convert_tools(
    tools: list[dict[str, Any]] | None, dialect: OpenAIDialect, names: ToolNameMap
) -> list[dict[str, Any]]:
    """Anthropic tool definitions → OpenAI ``tools`` (R-O17, R-O19, R-O20)."""
    out: list[dict[str, Any]] = []
    for tool in tools or ():
        kind = tool.get("type")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            continue
        if kind in (None, "custom"):
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                schema = {"type": "object", "properties": {}}
            elif dialect.strip_schema_dollar_schema and "$schema" in schema:
                schema = {k: v for k, v in schema.items() if k != "$schema"}
            description = tool.get("description")
            out.append(
                _function_tool(
                    names.upstream(name),
                    description if isinstance(description, str) else "",
                    schema,
                )
            )
            continue
        prefix = next((p for p in _CLIENT_TOOL_PREFIXES if str(kind).startswith(p)), None)
        if prefix is not None and dialect.synthesize_client_tools:
            description, schema = _CLIENT_TOOL_SCHEMAS[prefix]
            out.append(_function_tool(names.upstream(name), description, schema))
            continue
        # R-O20: server tools would never get a result back to the client.
        log.info("dropping tool %r of type %r: not available on this upstream", name, kind)
    return out


# --- messages (§2.3) -----------------------------------------------------------------------


def _text_of_blocks(content: Any, separator: str = "\n") -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return separator.join(
        b["text"]
        for b in content
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _search_result_text(block: dict[str, Any]) -> str:
    title = block.get("title") or ""
    source = block.get("source") or ""
    head = f"{title} ({source})" if source else str(title)
    body = _text_of_blocks(block.get("content"))
    return f"{head}\n{body}" if head and body else head or body


class _MessageBuilder:
    """One conversion of ``messages``; holds the pairing state of §2.3."""

    def __init__(self, dialect: OpenAIDialect, names: ToolNameMap, *, flatten: bool) -> None:
        self.dialect = dialect
        self.names = names
        self.flatten = flatten
        self.out: list[dict[str, Any]] = []
        self.pending_calls: list[str] = []  # tool_call ids still waiting for a tool message
        self.deferred: list[dict[str, Any]] = []  # user parts waiting for the tool messages
        self.deferred_system: list[str] = []  # system messages waiting for the tool messages
        self.null_content: Any = None if dialect.assistant_empty_content == "null" else ""

    # ids ---------------------------------------------------------------------------------
    def call_id(self, tool_id: str) -> str:
        if self.dialect.tool_id_style == "mistral9":
            return mistral_tool_id(tool_id)
        return tool_id

    # parts -------------------------------------------------------------------------------
    def image_part(self, block: dict[str, Any]) -> dict[str, Any]:
        source = block.get("source") or {}
        kind = source.get("type")
        if kind == "file":
            raise invalid_request(
                "image blocks with a file_id source are not supported for this model; "
                "send the image as base64 or URL"
            )
        if not self.dialect.supports_images:
            return {"type": "text", "text": "[image omitted: this model cannot view images]"}
        if kind == "base64":
            media = source.get("media_type") or "image/png"
            url = f"data:{media};base64,{source.get('data') or ''}"
        elif kind == "url" and isinstance(source.get("url"), str):
            url = source["url"]
        else:
            raise invalid_request(f"image source type {kind!r} is not supported")
        return {"type": "image_url", "image_url": {"url": url}}

    def document_parts(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        source = block.get("source") or {}
        kind = source.get("type")
        title = block.get("title") if isinstance(block.get("title"), str) else None
        header = "\n".join(
            x
            for x in (
                title,
                block.get("context") if isinstance(block.get("context"), str) else None,
            )
            if x
        )
        if kind == "text":
            data = source.get("data") or ""
            return [{"type": "text", "text": f"{header}\n{data}" if header else data}]
        if kind == "content":
            inner = source.get("content")
            parts: list[dict[str, Any]] = [{"type": "text", "text": header}] if header else []
            if isinstance(inner, str):
                parts.append({"type": "text", "text": inner})
            elif isinstance(inner, list):
                for b in inner:
                    if not isinstance(b, dict):
                        continue
                    if b.get("type") == "text" and b.get("text"):
                        parts.append({"type": "text", "text": b["text"]})
                    elif b.get("type") == "image":
                        parts.append(self.image_part(b))
            return parts
        if kind == "file":
            raise invalid_request(
                "document blocks with a file_id source are not supported for this model; "
                "send the document as base64"
            )
        if kind not in ("base64", "url"):
            raise invalid_request(f"document source type {kind!r} is not supported")
        support = self.dialect.document_support
        if support == "reject":
            raise invalid_request("PDF documents are not supported by this model")
        name = title or "document.pdf"
        if support == "text":
            return [
                {
                    "type": "text",
                    "text": f"[document {name!r} omitted: this model cannot read PDF files]",
                }
            ]
        if kind == "base64":
            media = source.get("media_type") or "application/pdf"
            data = f"data:{media};base64,{source.get('data') or ''}"
        else:
            data = str(source.get("url") or "")
        return [{"type": "file", "file": {"filename": name, "file_data": data}}]

    def user_parts(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str) or not text:
                return []
            part: dict[str, Any] = {"type": "text", "text": text}
            if self.dialect.mark_cache_control and isinstance(block.get("cache_control"), dict):
                part["cache_control"] = block["cache_control"]
            return [part]
        if kind == "image":
            return [self.image_part(block)]
        if kind == "document":
            return self.document_parts(block)
        if kind == "search_result":
            return [{"type": "text", "text": _search_result_text(block)}]
        log.debug("dropping %r block from a user message", kind)
        return []

    def tool_result_text(self, block: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """Text of a tool_result and the images that must move to the next user message."""
        content = block.get("content")
        images: list[dict[str, Any]] = []
        if isinstance(content, str):
            text = content
        else:
            pieces: list[str] = []
            for b in content if isinstance(content, list) else ():
                if not isinstance(b, dict):
                    continue
                kind = b.get("type")
                if kind == "text" and isinstance(b.get("text"), str):
                    pieces.append(b["text"])
                elif kind == "image":
                    part = self.image_part(b)
                    if part["type"] == "text":
                        pieces.append(part["text"])
                    else:
                        images.append(part)
                        pieces.append(IMAGE_MARKER)
                elif kind == "document":
                    for p in self.document_parts(b):
                        if p["type"] == "text":
                            pieces.append(p["text"])
                        else:
                            images.append(p)
                            pieces.append("[document attached in the next message]")
                elif kind == "search_result":
                    pieces.append(_search_result_text(b))
                elif kind == "tool_reference":
                    pieces.append(str(b.get("tool_name") or b.get("name") or ""))
            text = "\n".join(p for p in pieces if p)
        if block.get("is_error"):
            text = f"Error: {text}" if text else "Error"
        return text, images

    # output ------------------------------------------------------------------------------
    def flush_pending(self) -> None:
        """R-O12: answer calls that got no tool message before the next non-tool message."""
        for call_id in self.pending_calls:
            self.out.append({"role": "tool", "tool_call_id": call_id, "content": NO_RESULT})
        self.pending_calls = []

    def add_user(self, parts: list[dict[str, Any]]) -> None:
        if self.deferred:
            parts = self.deferred + parts
            self.deferred = []
        if self.deferred_system:
            self.flush_pending()
            for text in self.deferred_system:
                self.out.append({"role": "system", "content": text})
            self.deferred_system = []
        if not parts:
            return
        self.flush_pending()
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "user":  # R-O14
            last["content"].extend(parts)
        else:
            self.out.append({"role": "user", "content": parts})

    def system(self, text: str) -> None:
        """A ``role:"system"`` message after the conversation started (R-O5)."""
        if not text:
            return
        if self.dialect.mid_system == "system":
            if self.pending_calls:  # the tool messages must follow their calls first
                self.deferred_system.append(text)
            else:
                self.out.append({"role": "system", "content": text})
            return
        wrapped = self.dialect.mid_system_template.replace("{text}", text)
        part = {"type": "text", "text": wrapped}
        if self.pending_calls:
            self.deferred.append(part)
        else:
            self.add_user([part])

    def user(self, blocks: list[dict[str, Any]]) -> None:
        parts: list[dict[str, Any]] = []
        for block in blocks:
            if block.get("type") != "tool_result":
                parts.extend(self.user_parts(block))
                continue
            tool_id = str(block.get("tool_use_id") or "")
            text, images = self.tool_result_text(block)
            call_id = self.call_id(tool_id)
            if not self.flatten and call_id in self.pending_calls:
                self.pending_calls.remove(call_id)
                self.out.append({"role": "tool", "tool_call_id": call_id, "content": text})
            elif self.flatten:
                parts.append({"type": "text", "text": f"[result: {text}]"})
            else:  # R-O13: no matching call right before it
                parts.append({"type": "text", "text": f"Tool result ({tool_id}): {text}"})
            parts.extend(images)
        self.add_user(parts)

    def assistant(self, blocks: list[dict[str, Any]]) -> None:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        reasoning: list[str] = []
        details: list[dict[str, Any]] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                if isinstance(block.get("text"), str):
                    texts.append(block["text"])
            elif kind == "tool_use":
                name = str(block.get("name") or "")
                arguments = dumps_str(block.get("input") or {})  # R-O7
                if self.flatten:
                    texts.append(f"[called {name}({arguments})]")
                    continue
                calls.append(
                    {
                        "id": self.call_id(str(block.get("id") or "")),
                        "type": "function",
                        "function": {"name": self.names.upstream(name), "arguments": arguments},
                    }
                )
            elif kind == "thinking":
                text = block.get("thinking") if isinstance(block.get("thinking"), str) else ""
                if text:
                    reasoning.append(text)
                item = decode_orx(str(block.get("signature") or ""))
                if item is not None:
                    item = dict(item)
                    item["summary" if item.get("type") == "reasoning.summary" else "text"] = text
                    details.append(item)
            elif kind == "redacted_thinking":
                item = decode_orx(str(block.get("data") or ""))
                if item is not None:
                    details.append(item)
            else:
                log.debug("dropping %r block from an assistant message", kind)
        content = "".join(texts)
        if calls and not content.strip():  # R-O6
            content = ""
        if not content and not calls:  # R-O9
            return
        self.flush_pending()
        if self.deferred or self.deferred_system:
            self.add_user([])  # a mid-conversation system text that was waiting for tools
        msg: dict[str, Any] = {"role": "assistant", "content": content or self.null_content}
        if calls:
            msg["tool_calls"] = calls
        field = self.dialect.reasoning_input
        text = "\n\n".join(reasoning)
        if field == "reasoning_details":
            if details:
                msg["reasoning_details"] = details
            elif text:
                msg["reasoning"] = text
        elif field is not None and text:
            msg[field] = text
        if calls and self.dialect.requires_reasoning_content_on_tool_calls:
            msg.setdefault("reasoning_content", "")
        self.out.append(msg)
        if calls:
            self.pending_calls = [c["id"] for c in calls]

    def finish(self) -> list[dict[str, Any]]:
        self.flush_pending()
        if self.deferred or self.deferred_system:
            self.add_user([])
        for msg in self.out:
            if msg["role"] == "user":
                msg["content"] = self._user_content(msg["content"])
        return self.out

    def _user_content(self, parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if all(p["type"] == "text" and "cache_control" not in p for p in parts):
            return "\n\n".join(p["text"] for p in parts)
        return parts


def _system_text(req: MessagesRequest) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt without Claude Code's per-request billing block, and its blocks."""
    system = req.system
    if system is None:
        return "", []
    if isinstance(system, str):
        if system.startswith(BILLING_HEADER_PREFIX):
            system = system.partition("\n")[2]
        return system, [{"type": "text", "text": system}] if system else []
    blocks = [
        b
        for b in system
        if b.get("type") == "text"
        and isinstance(b.get("text"), str)
        and b["text"]
        and not b["text"].startswith(BILLING_HEADER_PREFIX)
    ]
    return "\n\n".join(b["text"] for b in blocks), blocks


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
    elif kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
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

    system_text, system_blocks = _system_text(req)
    builder = _MessageBuilder(dialect, names, flatten=not tools and dialect.needs_tools_for_history)
    leading: list[str] = [system_text] if system_text else []
    started = False
    group_role: str | None = None
    group: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role == "system":
            text = _text_of_blocks(msg.content, "\n\n")
            if not started:
                if text:
                    leading.append(text)
                    system_blocks.append({"type": "text", "text": text})
                continue
            if group_role is not None:
                _emit(builder, group_role, group)
                group_role, group = None, []
            builder.system(text)
            continue
        started = True
        if msg.role != group_role and group_role is not None:
            _emit(builder, group_role, group)
            group = []
        group_role = msg.role
        group = group + msg.blocks() if group else list(msg.blocks())
    if group_role is not None:
        _emit(builder, group_role, group)
    messages = builder.finish()

    system_content: Any = "\n\n".join(leading)
    if dialect.mark_cache_control and any("cache_control" in b for b in system_blocks):
        system_content = [
            {"type": "text", "text": b["text"], "cache_control": b["cache_control"]}
            if isinstance(b.get("cache_control"), dict)
            else {"type": "text", "text": b["text"]}
            for b in system_blocks
        ]
    if system_content:
        messages.insert(0, {"role": dialect.system_role, "content": system_content})
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


def _emit(builder: _MessageBuilder, role: str, blocks: list[dict[str, Any]]) -> None:
    if role == "assistant":
        builder.assistant(blocks)
    else:
        builder.user(blocks)
