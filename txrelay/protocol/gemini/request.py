"""
Anthropic Messages request → Gemini ``GenerateContentRequest`` (A→G, mapping.md §5).

:func:`build_generate_request` is pure: the same request and options give the same body. That
keeps Gemini's implicit prefix cache warm, so two choices follow from it:

- Claude Code's per-request ``x-anthropic-billing-header`` system block is removed, and only the
  *leading* system text becomes ``systemInstruction``.
- A ``role: "system"`` message in the middle of the conversation becomes a user text part at
  its position (wrapped in ``<system>…</system>``), never a change to ``systemInstruction``:
  everything before it stays byte-identical from turn to turn, and Gemini has no
  mid-conversation system role. When it falls between a call and its results it lands after the
  ``functionResponse`` parts, which must open the user turn (R-G5).

Thought signatures (R-G10): a ``functionCall`` gets the signature recovered from the carrier
thinking block the relay put before its ``tool_use``; thought parts get theirs back from their
thinking block; in the current turn, a model step whose first call still has none gets Google's
placeholder. Signatures issued for another scope (model) are not sent.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Mapping
from typing import Any, Literal

from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import invalid_request
from txrelay.protocol.gemini import signatures as sigs
from txrelay.protocol.gemini.names import GeminiToolNames
from txrelay.protocol.gemini.schema import clean_parameters, clean_schema

log = logging.getLogger(__name__)

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
MID_SYSTEM_TEMPLATE = "<system>\n{text}\n</system>"
NO_RESULT = "(no result)"
MAX_STOP_SEQUENCES = 5
ThinkingStyle = Literal["budget", "level", "none"]

_EFFORT_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576,
                   "xhigh": 32768, "max": 32768}
_THINKING_ON = frozenset({"enabled", "adaptive", "between_tools"})
_FILE_URI_PREFIXES = ("gs://", "https://generativelanguage.googleapis.com/")


def thinking_style_for(model: str) -> ThinkingStyle:
    """Gemini 3 takes ``thinkingLevel``, 2.5 ``thinkingBudget``; older models neither."""
    m = model.lower().rpartition("/")[2]
    if m.startswith("gemini-2.5") or m.startswith("gemini-flash") or m.startswith("gemini-pro"):
        return "budget"
    if m.startswith("gemini-") and m[7:8].isdigit() and int(m[7:8]) >= 3:
        return "level"
    return "none"


def _is_pro(model: str) -> bool:
    return "pro" in model.lower().rpartition("/")[2]


# --- system --------------------------------------------------------------------------------


def _text_of(content: Any, separator: str = "\n") -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return separator.join(
        b["text"]
        for b in content
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _system_text(req: MessagesRequest) -> str:
    system = req.system
    if system is None:
        return ""
    if isinstance(system, str):
        return system.partition("\n")[2] if system.startswith(BILLING_HEADER_PREFIX) else system
    return "\n\n".join(
        b["text"]
        for b in system
        if b.get("type") == "text"
        and isinstance(b.get("text"), str)
        and b["text"]
        and not b["text"].startswith(BILLING_HEADER_PREFIX)
    )


# --- content parts -------------------------------------------------------------------------


def _media_part(source: Mapping[str, Any], what: str, default_mime: str) -> dict[str, Any]:
    kind = source.get("type")
    if kind == "base64":
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise invalid_request(f"{what} has an empty base64 source")
        mime = source.get("media_type")
        return {"inlineData": {"mimeType": mime if isinstance(mime, str) else default_mime,
                               "data": data}}
    if kind == "url" and isinstance(source.get("url"), str):
        url: str = source["url"]
        if url.startswith(_FILE_URI_PREFIXES):
            mime = source.get("media_type")
            if not isinstance(mime, str):
                mime = mimetypes.guess_type(url)[0] or default_mime
            return {"fileData": {"mimeType": mime, "fileUri": url}}
        raise invalid_request(
            f"{what} given by URL is not supported by the Gemini backend "
            "(only gs:// and Gemini Files API URIs); send it as base64"
        )
    if kind == "file":
        raise invalid_request(
            f"{what} with a file_id source is not supported by the Gemini backend; "
            "send it as base64"
        )
    raise invalid_request(f"{what} source type {kind!r} is not supported")


def _document_parts(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    kind = source.get("type")
    header = "\n".join(
        x for x in (block.get("title"), block.get("context")) if isinstance(x, str) and x
    )
    if kind == "text":
        data = source.get("data") if isinstance(source.get("data"), str) else ""
        text = f"{header}\n{data}" if header and data else header or data
        return [{"text": text}] if text else []
    if kind == "content":
        parts: list[dict[str, Any]] = [{"text": header}] if header else []
        inner = source.get("content")
        if isinstance(inner, str) and inner:
            parts.append({"text": inner})
        elif isinstance(inner, list):
            for b in inner:
                if isinstance(b, dict):
                    parts.extend(_user_parts(b))
        return parts
    parts = [{"text": header}] if header else []
    parts.append(_media_part(source, "a document", "application/pdf"))
    return parts


def _search_result_text(block: Mapping[str, Any]) -> str:
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    source = block.get("source") if isinstance(block.get("source"), str) else ""
    head = f"{title} ({source})" if source else title
    body = _text_of(block.get("content"))
    return f"{head}\n{body}" if head and body else head or body


def _user_parts(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return [{"text": text}] if isinstance(text, str) and text else []
    if kind == "image":
        source = block.get("source")
        return [_media_part(source if isinstance(source, dict) else {}, "an image", "image/png")]
    if kind == "document":
        return _document_parts(block)
    if kind == "search_result":
        text = _search_result_text(block)
        return [{"text": text}] if text else []
    log.debug("dropping %r block from a user message", kind)
    return []


def _tool_result(block: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text of a tool_result and the media parts that follow the responses."""
    content = block.get("content")
    media: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    else:
        pieces: list[str] = []
        for b in content if isinstance(content, list) else ():
            if not isinstance(b, dict):
                continue
            for part in _user_parts(b) if b.get("type") != "tool_reference" else ():
                if "text" in part:
                    pieces.append(part["text"])
                else:
                    media.append(part)
                    pieces.append("[attachment follows the tool results]")
            if b.get("type") == "tool_reference":
                name = b.get("tool_name") or b.get("name")
                if isinstance(name, str):
                    pieces.append(name)
        text = "\n".join(p for p in pieces if p)
    return text, media


# --- messages ------------------------------------------------------------------------------


class _Call:
    __slots__ = ("gemini_id", "name", "tool_id")

    def __init__(self, tool_id: str, name: str, gemini_id: str | None) -> None:
        self.tool_id = tool_id
        self.name = name
        self.gemini_id = gemini_id


class _Contents:
    """One conversion of ``messages`` into ``contents`` (§5.2, R-G3..R-G6)."""

    def __init__(self, names: GeminiToolNames, scope: str | None) -> None:
        self.names = names
        self.scope = scope  # None: replay no signature at all
        self.out: list[dict[str, Any]] = []
        self.pending: list[_Call] = []  # calls of the last model content, awaiting results
        self.responses: dict[int, dict[str, Any]] = {}  # pending index → functionResponse
        self.media: list[dict[str, Any]] = []  # tool-result attachments of the open user turn

    # model turns -------------------------------------------------------------------------
    def assistant(self, blocks: list[dict[str, Any]]) -> None:
        carried: dict[str, str] = {}
        for block in blocks:
            if block.get("type") == "thinking" and self.scope is not None:
                decoded = sigs.decode_call(block.get("signature"), self.scope)
                if decoded is not None:
                    carried.setdefault(decoded[0], decoded[1])
        parts: list[dict[str, Any]] = []
        calls: list[_Call] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                text = block.get("text")
                if isinstance(text, str) and text:
                    parts.append({"text": text})
            elif kind == "thinking":
                sig = (
                    None if self.scope is None
                    else sigs.decode_thought(block.get("signature"), self.scope)
                )
                text = block.get("thinking")
                if sig is not None and isinstance(text, str) and text:
                    parts.append({"text": text, "thought": True, "thoughtSignature": sig})
            elif kind == "tool_use":
                tool_id = block.get("id")
                name = block.get("name")
                if not isinstance(tool_id, str) or not isinstance(name, str) or not name:
                    continue
                args = block.get("input")
                call = _Call(tool_id, self.names.upstream(name), sigs.gemini_call_id(tool_id))
                fc: dict[str, Any] = {"name": call.name, "args": args if isinstance(args, dict)
                                      else {}}
                if call.gemini_id is not None:
                    fc["id"] = call.gemini_id
                part: dict[str, Any] = {"functionCall": fc}
                if tool_id in carried:
                    part["thoughtSignature"] = carried[tool_id]
                parts.append(part)
                calls.append(call)
            else:
                log.debug("dropping %r block from an assistant message", kind)
        if not parts:
            return
        self.close_user()
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "model":
            last["parts"].extend(parts)
            self.pending.extend(calls)
        else:
            self.out.append({"role": "model", "parts": parts})
            self.pending = calls

    # user turns --------------------------------------------------------------------------
    def user(self, blocks: list[dict[str, Any]]) -> None:
        parts: list[dict[str, Any]] = []
        for block in blocks:
            if block.get("type") != "tool_result":
                parts.extend(_user_parts(block))
                continue
            tool_id = str(block.get("tool_use_id") or "")
            text, media = _tool_result(block)
            # The first call with this id still waiting (ids may repeat in bad histories).
            slot = next((i for i, c in enumerate(self.pending)
                         if c.tool_id == tool_id and i not in self.responses), None)
            if slot is None:
                # R-G6: no matching call right before it.
                label = f"Tool result ({tool_id})" if tool_id else "Tool result"
                parts.append({"text": f"{label}: {text or NO_RESULT}"})
                parts.extend(media)
                continue
            call = self.pending[slot]
            response: dict[str, Any] = {
                "name": call.name,
                "response": {"error" if block.get("is_error") else "output": text},
            }
            if call.gemini_id is not None:
                response["id"] = call.gemini_id
            self.responses[slot] = {"functionResponse": response}
            self.media.extend(media)
        self.add_user(parts)

    def system(self, text: str) -> None:
        if text:
            self.add_user([{"text": MID_SYSTEM_TEMPLATE.replace("{text}", text)}])

    def add_user(self, parts: list[dict[str, Any]]) -> None:
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "user" and not self.pending:
            last["parts"].extend(parts)
            return
        if not parts and not self.responses:
            return
        if last is None or last["role"] != "user":
            self.out.append({"role": "user", "parts": []})
        self.out[-1]["parts"].extend(parts)

    def close_user(self) -> None:
        """R-G5: the user turn after a call turn opens with one response per call, in order."""
        if not self.pending:
            return
        if not self.out or self.out[-1]["role"] != "user":
            self.out.append({"role": "user", "parts": []})
        head = []
        for slot, call in enumerate(self.pending):
            part = self.responses.get(slot)
            if part is None:
                synthesized: dict[str, Any] = {"name": call.name, "response": {"output": NO_RESULT}}
                if call.gemini_id is not None:
                    synthesized["id"] = call.gemini_id
                part = {"functionResponse": synthesized}
            head.append(part)
        user = self.out[-1]
        user["parts"] = head + self.media + user["parts"]
        self.pending = []
        self.responses = {}
        self.media = []

    def finish(self, *, placeholders: bool) -> list[dict[str, Any]]:
        last = self.out[-1] if self.out else None
        if self.pending and last is not None and last["role"] == "user":
            self.close_user()
        self.out = [c for c in self.out if c["parts"]]
        if placeholders:
            _placeholder_signatures(self.out)
        return self.out


def _placeholder_signatures(contents: list[dict[str, Any]]) -> None:
    """
    R-G10.2: every model step of the current turn has a signed first ``functionCall``.

    Gemini's current turn starts after the last user content with ordinary content. A user
    content that also carries function responses (with a tool's image, or a mid-conversation
    system text) may or may not count as ordinary for the service, so the turn is taken to
    start after the last user content *without* function responses: a superset, and a
    placeholder on a call Gemini would not have checked is harmless.
    """
    start = 0
    for i, content in enumerate(contents):
        if content["role"] == "user" and not any("functionResponse" in p
                                                 for p in content["parts"]):
            start = i + 1
    for content in contents[start:]:
        if content["role"] != "model":
            continue
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and "thoughtSignature" not in first:
            first["thoughtSignature"] = sigs.PLACEHOLDER


def _contents(
    req: MessagesRequest, names: GeminiToolNames, scope: str | None, *, placeholders: bool
) -> tuple[str, list[dict[str, Any]]]:
    leading = [_system_text(req)] if _system_text(req) else []
    builder = _Contents(names, scope)
    started = False
    for msg in req.messages:
        if msg.role == "system":
            text = _text_of(msg.content, "\n\n")
            if not started:
                if text:
                    leading.append(text)
            else:
                builder.system(text)
            continue
        started = True
        if msg.role == "assistant":
            builder.assistant(msg.blocks())
        else:
            builder.user(msg.blocks())
    return "\n\n".join(leading), builder.finish(placeholders=placeholders)


# --- tools ---------------------------------------------------------------------------------


def function_declarations(
    tools: list[dict[str, Any]] | None, names: GeminiToolNames
) -> list[dict[str, Any]]:
    """Custom tools → ``functionDeclarations`` (R-G7/R-G8); server tools are dropped."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for tool in tools or ():
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            continue
        if tool.get("type") not in (None, "custom"):
            log.info("dropping tool %r of type %r: not available on Gemini", name, tool["type"])
            continue
        upstream = names.upstream(name)
        if upstream in seen:
            continue
        seen.add(upstream)
        decl: dict[str, Any] = {"name": upstream}
        description = tool.get("description")
        if isinstance(description, str) and description:
            decl["description"] = description
        parameters = clean_parameters(tool.get("input_schema"))
        if parameters is not None:
            decl["parameters"] = parameters
        out.append(decl)
    return out


def _tool_config(
    req: MessagesRequest, names: GeminiToolNames, declared: set[str]
) -> dict[str, Any] | None:
    choice = req.tool_choice or {}
    kind = choice.get("type")
    if kind == "any":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if kind == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if kind == "tool" and isinstance(choice.get("name"), str):
        name = names.upstream(choice["name"])
        if name in declared:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
        raise invalid_request(
            f"tool_choice names {choice['name']!r}, which is not a custom tool of this request"
        )
    if kind == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    return None  # disable_parallel_tool_use has no Gemini equivalent


# --- thinking ------------------------------------------------------------------------------


def _level_for(effort: str, model: str) -> str:
    pro = _is_pro(model)
    if effort in ("none", "minimal"):
        return "LOW" if pro else "MINIMAL"
    if effort == "low":
        return "LOW"
    if effort == "medium":
        return "HIGH" if pro else "MEDIUM"
    return "HIGH"


def _level_for_budget(budget: int, model: str) -> str:
    if budget < 4096:
        return "LOW"
    if budget < 16384 and not _is_pro(model):
        return "MEDIUM"
    return "HIGH"


def thinking_config(
    req: MessagesRequest, *, model: str, style: ThinkingStyle, max_output: int | None
) -> dict[str, Any] | None:
    """R-G9: ``thinking`` and ``output_config.effort`` → ``thinkingConfig`` (or ``None``)."""
    if style == "none":
        return None
    thinking = req.thinking or {}
    kind = thinking.get("type")
    effort = (req.output_config or {}).get("effort")
    effort = effort if isinstance(effort, str) and effort else None
    budget = thinking.get("budget_tokens") if kind == "enabled" else None
    budget = budget if isinstance(budget, int) and not isinstance(budget, bool) else None
    on = kind in _THINKING_ON
    config: dict[str, Any] = {}
    if style == "level":
        if effort is not None and kind != "disabled":
            config["thinkingLevel"] = _level_for(effort, model)
        elif budget is not None:
            config["thinkingLevel"] = _level_for_budget(budget, model)
        elif kind == "disabled" and not _is_pro(model):
            config["thinkingLevel"] = "MINIMAL"  # the lowest level; Gemini 3 always thinks
    else:
        value: int | None = None
        if kind == "disabled" or (kind is None and effort is None):
            value = None if _is_pro(model) else 0  # 2.5 Pro cannot turn thinking off
        elif effort is not None:
            value = _EFFORT_BUDGETS.get(effort, 8192)
        elif budget is not None:
            value = budget
        elif on:
            value = -1  # adaptive: dynamic
        if value is not None and value > 0:
            value = max(128, min(value, 32768))
            if max_output is not None and value > max_output - 1024:
                value = max(128, max_output - 1024)  # keep room for the answer (R-G2)
        if value is not None:
            config["thinkingBudget"] = value
    if on and thinking.get("display") != "omitted":
        config["includeThoughts"] = True
    return config or None


# --- the request ---------------------------------------------------------------------------


def build_generate_request(
    req: MessagesRequest,
    *,
    upstream_model: str,
    max_output_tokens: int | None,
    tool_names: GeminiToolNames | None = None,
    thinking_style: ThinkingStyle | None = None,
    signature_scope: str | None = None,
    placeholder_signatures: bool | None = None,
    replay_signatures: bool = True,
    safety_settings: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """
    The ``generateContent`` / ``streamGenerateContent`` body for ``req`` (mapping.md §5).

    :param upstream_model: the Gemini model id (``gemini-2.5-pro``); picks the thinking style
        and whether placeholder signatures are needed when not given.
    :param max_output_tokens: the model's output limit; ``max_tokens`` is clamped to it.
    :param tool_names: the name map (built from ``req`` when not given); pass the same map to
        the response translator.
    :param thinking_style: ``"level"`` (Gemini 3), ``"budget"`` (2.5) or ``"none"`` (no
        ``thinkingConfig``: the model does not think).
    :param signature_scope: what signatures are bound to (default: ``upstream_model``); give the
        response translator the same value.
    :param placeholder_signatures: apply R-G10.2 (default: for ``"level"`` models).
    :param replay_signatures: ``False`` sends no historical signature, only placeholders:
        the retry after Gemini rejected one (R-G10.3, :func:`is_signature_rejection`).
    :param safety_settings: sent as ``safetySettings`` when given.
    :raises RelayError: 400 for content Gemini cannot take without a change of meaning.
    """
    names = tool_names if tool_names is not None else GeminiToolNames.from_request(req)
    style = thinking_style if thinking_style is not None else thinking_style_for(upstream_model)
    scope: str | None = signature_scope if signature_scope is not None else upstream_model
    if not replay_signatures:
        scope = None
    if placeholder_signatures is None:
        placeholder_signatures = style == "level"
    body = _prompt(req, names, scope, placeholders=placeholder_signatures)
    declared = {d["name"] for d in body.get("tools", [{}])[0].get("functionDeclarations", ())}
    if declared:
        config = _tool_config(req, names, declared)
        if config is not None:
            body["toolConfig"] = config

    generation: dict[str, Any] = {}
    limit = req.max_tokens if req.max_tokens is not None else max_output_tokens
    if limit is not None and max_output_tokens is not None:
        limit = min(limit, max_output_tokens)
    if limit is not None:
        generation["maxOutputTokens"] = max(1, limit)
    stops = [s for s in req.stop_sequences or () if isinstance(s, str) and s]
    if len(stops) > MAX_STOP_SEQUENCES:
        log.info("sending only %d of %d stop sequences", MAX_STOP_SEQUENCES, len(stops))
        stops = stops[:MAX_STOP_SEQUENCES]
    if stops:
        generation["stopSequences"] = stops
    if req.temperature is not None:
        generation["temperature"] = req.temperature
    if req.top_p is not None:
        generation["topP"] = req.top_p
    if req.top_k is not None:
        generation["topK"] = req.top_k
    fmt = (req.output_config or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        generation["responseMimeType"] = "application/json"
        if isinstance(fmt.get("schema"), dict):
            generation["responseSchema"] = clean_schema(fmt["schema"])
    thinking = thinking_config(req, model=upstream_model, style=style,
                               max_output=generation.get("maxOutputTokens"))
    if thinking is not None:
        generation["thinkingConfig"] = thinking
    if generation:
        body["generationConfig"] = generation
    if safety_settings:
        body["safetySettings"] = [dict(s) for s in safety_settings]
    return body


def _prompt(
    req: MessagesRequest, names: GeminiToolNames, scope: str | None, *, placeholders: bool
) -> dict[str, Any]:
    """``contents``, ``systemInstruction`` and ``tools``: what both endpoints share."""
    system, contents = _contents(req, names, scope, placeholders=placeholders)
    if not contents:
        raise invalid_request("messages: every message is empty; there is nothing to send")
    body: dict[str, Any] = {"contents": contents}
    if system:
        # The role is ignored, but Vertex rejects a content without one; the SDK sends "user".
        body["systemInstruction"] = {"role": "user", "parts": [{"text": system}]}
    declarations = function_declarations(req.tools, names)
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]  # one Tool object (§2.3)
    return body


def build_count_tokens_request(
    req: MessagesRequest,
    *,
    upstream_model: str,
    vertex: bool = False,
    tool_names: GeminiToolNames | None = None,
    signature_scope: str | None = None,
    placeholder_signatures: bool | None = None,
) -> dict[str, Any]:
    """
    The ``countTokens`` body for ``req`` (R-C1): the same translation as a generate request.

    AI Studio counts system instruction and tools only inside ``generateContentRequest``
    (whose ``model`` is ``models/<id>``); Vertex takes the fields at the top level.
    """
    names = tool_names if tool_names is not None else GeminiToolNames.from_request(req)
    scope = signature_scope if signature_scope is not None else upstream_model
    if placeholder_signatures is None:
        placeholder_signatures = thinking_style_for(upstream_model) == "level"
    body = _prompt(req, names, scope, placeholders=placeholder_signatures)
    if vertex:
        return body
    model = upstream_model if "/" in upstream_model else f"models/{upstream_model}"
    return {"generateContentRequest": {"model": model, **body}}
