"""
Anthropic ``messages`` and ``system`` → Chat Completions ``messages`` (mapping.md §2.2, §2.3).

:class:`MessageBuilder` holds the pairing state of §2.3 (tool calls waiting for their tool
messages, user parts and mid-conversation system texts deferred until they are answered);
:func:`chat_messages` groups the request's messages by role and runs the builder.
"""

from __future__ import annotations

import logging
from typing import Any

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import invalid_request
from txrelay.protocol.jsoncodec import dumps_str
from txrelay.protocol.openai.dialect import OpenAIDialect
from txrelay.protocol.openai.signature import decode_orx
from txrelay.protocol.openai.toolnames import ToolNameMap, mistral_tool_id

log = logging.getLogger(__name__)

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
IMAGE_MARKER = "[image attached in the next message]"
NO_RESULT = "(no result)"


def text_of_blocks(content: Any, separator: str = "\n") -> str:
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
    body = text_of_blocks(block.get("content"))
    return f"{head}\n{body}" if head and body else head or body


class MessageBuilder:
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


def chat_messages(
    req: MessagesRequest, dialect: OpenAIDialect, names: ToolNameMap, *, flatten: bool
) -> list[dict[str, Any]]:
    """
    The Chat Completions ``messages`` for ``req``, leading system message included.

    :param flatten: write tool history as text (R-O15), for upstreams sent no tools.
    """
    system_text, system_blocks = _system_text(req)
    builder = MessageBuilder(dialect, names, flatten=flatten)
    leading: list[str] = [system_text] if system_text else []
    started = False
    group_role: str | None = None
    group: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role == "system":
            text = text_of_blocks(msg.content, "\n\n")
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
    return messages


def _emit(builder: MessageBuilder, role: str, blocks: list[dict[str, Any]]) -> None:
    if role == "assistant":
        builder.assistant(blocks)
    else:
        builder.user(blocks)
