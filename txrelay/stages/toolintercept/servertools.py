# -*- test-case-name: tests.stages.toolintercept.test_servertools -*-
"""
Anthropic server tools (``web_search_*``, ``web_fetch_*``) offered to a backend that cannot
run them: the sans-IO half of the ``tool-intercept`` stage.

- :func:`server_tools` finds the server tools a request offers (matched exactly by type
  prefix and name, so client tools such as Claude Code's ``WebSearch`` never match);
- :func:`rewrite_request` offers the model equivalent function tools instead and turns the
  server-tool blocks of the conversation (``server_tool_use`` and the ``*_tool_result``
  blocks a client echoes back) into ordinary ``tool_use`` / ``tool_result`` pairs;
- :func:`search_result_block`, :func:`fetch_result_block` and :func:`error_result_block`
  build the result blocks exactly as the Anthropic API sends them (checked against the
  ``anthropic`` SDK's types).

Nothing here imports Twisted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from txrelay.protocol.anthropic import InputMessage, MessagesRequest
from txrelay.protocol.errors import invalid_request
from txrelay.protocol.ids import base62
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps, loads

Kind = Literal["web_search", "web_fetch"]

#: ``type`` prefixes of the server tools this stage runs, by kind.
TYPE_PREFIXES: Mapping[Kind, str] = {"web_search": "web_search_", "web_fetch": "web_fetch_"}
RESULT_TYPES: Mapping[Kind, str] = {"web_search": "web_search_tool_result",
                                    "web_fetch": "web_fetch_tool_result"}
ERROR_TYPES: Mapping[Kind, str] = {"web_search": "web_search_tool_result_error",
                                   "web_fetch": "web_fetch_tool_result_error"}
USAGE_KEYS: Mapping[Kind, str] = {"web_search": "web_search_requests",
                                  "web_fetch": "web_fetch_requests"}

#: The error codes the SDK knows (``WebSearchToolResultErrorCode``,
#: ``WebFetchToolResultErrorCode``).
SEARCH_ERRORS = frozenset({"invalid_tool_input", "unavailable", "max_uses_exceeded",
                           "too_many_requests", "query_too_long", "request_too_large"})
FETCH_ERRORS = frozenset({"invalid_tool_input", "url_too_long", "url_not_allowed",
                          "url_not_in_prior_context", "url_not_accessible",
                          "unsupported_content_type", "too_many_requests",
                          "max_uses_exceeded", "unavailable", "content_too_large"})

_RESULT_TYPES = frozenset(RESULT_TYPES.values())

#: Marks ``encrypted_content`` the relay wrote (so a later turn can give the model the text).
_CONTENT_PREFIX = "txr1."

_SEARCH_DESCRIPTION = (
    "Search the web. Returns a numbered list of results (title, URL, age, snippet). Use it "
    "for current events and facts you do not know; cite the URLs you rely on."
)
_FETCH_DESCRIPTION = (
    "Fetch a web page or PDF by its full URL (one that appeared in the conversation or in "
    "search results) and return its readable text."
)


@attrs.frozen
class ServerTool:
    """One server tool a request offers, with the options the relay honours."""

    kind: Kind
    name: str
    type: str
    max_uses: int | None = None
    allowed_domains: tuple[str, ...] = ()
    blocked_domains: tuple[str, ...] = ()
    user_location: Mapping[str, Any] | None = None
    #: web_fetch: the approximate token budget of a fetched page's text.
    max_content_tokens: int | None = None


def tool_kind(tool: Mapping[str, Any]) -> Kind | None:
    """Which server tool a tool definition is (``None`` for client tools and others)."""
    kind = tool.get("type")
    if not isinstance(kind, str):
        return None
    for name, prefix in TYPE_PREFIXES.items():
        if kind.startswith(prefix) and tool.get("name") == name:
            return name
    return None


def _domains(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(d, str) and d for d in value):
        raise invalid_request(f"{where}: expected a list of domain names")
    return tuple(d.strip().lower() for d in value)


def server_tools(request: MessagesRequest) -> list[ServerTool]:
    """The web search / web fetch server tools ``request`` offers, checked."""
    out: list[ServerTool] = []
    for i, tool in enumerate(request.tools or ()):
        kind = tool_kind(tool)
        if kind is None:
            continue
        where = f"tools.{i}"
        max_uses = tool.get("max_uses")
        if max_uses is not None and (not isinstance(max_uses, int) or max_uses < 1):
            raise invalid_request(f"{where}.max_uses: expected a positive integer")
        allowed = _domains(tool.get("allowed_domains"), f"{where}.allowed_domains")
        blocked = _domains(tool.get("blocked_domains"), f"{where}.blocked_domains")
        if allowed and blocked:
            raise invalid_request(
                f"{where}: allowed_domains and blocked_domains cannot be used together")
        location = tool.get("user_location")
        if location is not None and not isinstance(location, dict):
            raise invalid_request(f"{where}.user_location: expected an object")
        budget = tool.get("max_content_tokens")
        out.append(ServerTool(kind, str(tool["name"]), str(tool["type"]), max_uses, allowed,
                              blocked, location, budget if isinstance(budget, int) else None))
    names = [t.get("name") for t in request.tools or ()]
    for found in out:
        if names.count(found.name) > 1:
            raise invalid_request(f"tools: tool names must be unique ({found.name!r} repeats)")
    return out


def function_tool(tool: ServerTool) -> dict[str, Any]:
    """The client tool the model is offered in place of ``tool``."""
    if tool.kind == "web_search":
        description = _SEARCH_DESCRIPTION
        if tool.allowed_domains:
            description += " Only results from " + ", ".join(tool.allowed_domains) + " are kept."
        schema = {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "The search query"}}}
    else:
        description = _FETCH_DESCRIPTION
        schema = {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "description": "The URL to fetch (http or https)"}}}
    return {"name": tool.name, "description": description, "input_schema": schema}


def server_tool_id() -> str:
    """A fresh ``srvtoolu_…`` id."""
    return "srvtoolu_01" + base62(22)


# domain rules


def _host_and_path(target: str) -> tuple[str, str]:
    parts = urlsplit(target if "//" in target else "//" + target)
    return (parts.hostname or "").rstrip(".").lower(), parts.path or "/"


def domain_matches(url: str, rule: str) -> bool:
    """
    Whether ``url`` falls under a domain rule as Anthropic applies them: the host equals the
    rule's host or is a subdomain of it; a rule with a path (``example.com/docs``) also
    requires the URL's path to start with it.
    """
    host, path = _host_and_path(url)
    rule_host, rule_path = _host_and_path(rule)
    if not host or not rule_host:
        return False
    if host != rule_host and not host.endswith("." + rule_host):
        return False
    return rule_path in ("", "/") or path.startswith(rule_path)


def url_allowed(url: str, tool: ServerTool) -> bool:
    """Whether ``tool``'s ``allowed_domains`` / ``blocked_domains`` let ``url`` through."""
    if tool.allowed_domains and not any(domain_matches(url, d) for d in tool.allowed_domains):
        return False
    return not any(domain_matches(url, d) for d in tool.blocked_domains)


# result blocks


@attrs.frozen
class SearchHit:
    """One search result, as a provider returned it."""

    url: str
    title: str
    snippet: str = ""
    page_age: str | None = None


def encode_content(text: str) -> str:
    """``encrypted_content`` for a result the relay made: its text, recoverable later."""
    return _CONTENT_PREFIX + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def decode_content(value: Any) -> str | None:
    """The text :func:`encode_content` stored, or ``None`` (Anthropic's own ciphertext)."""
    if not isinstance(value, str) or not value.startswith(_CONTENT_PREFIX):
        return None
    try:
        raw = base64.b64decode(value[len(_CONTENT_PREFIX):], altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def search_result_block(tool_use_id: str, hits: Iterable[SearchHit]) -> dict[str, Any]:
    """A ``web_search_tool_result`` block with ``web_search_result`` entries."""
    content: list[dict[str, Any]] = []
    for hit in hits:
        entry: dict[str, Any] = {"type": "web_search_result", "url": hit.url,
                                 "title": hit.title,
                                 "encrypted_content": encode_content(hit.snippet)}
        if hit.page_age:
            entry["page_age"] = hit.page_age
        content.append(entry)
    return {"type": "web_search_tool_result", "tool_use_id": tool_use_id, "content": content}


def fetch_result_block(tool_use_id: str, url: str, text: str, *, title: str | None,
                       retrieved_at: str) -> dict[str, Any]:
    """A ``web_fetch_tool_result`` block holding the page's text as a plain-text document."""
    document: dict[str, Any] = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": text},
    }
    if title:
        document["title"] = title
    return {"type": "web_fetch_tool_result", "tool_use_id": tool_use_id,
            "content": {"type": "web_fetch_result", "url": url, "retrieved_at": retrieved_at,
                        "content": document}}


def error_result_block(kind: Kind, tool_use_id: str, code: str) -> dict[str, Any]:
    """A result block carrying one of Anthropic's documented error codes."""
    known = SEARCH_ERRORS if kind == "web_search" else FETCH_ERRORS
    if code not in known:
        raise ValueError(f"{code!r} is not a {kind} error code")
    return {"type": RESULT_TYPES[kind], "tool_use_id": tool_use_id,
            "content": {"type": ERROR_TYPES[kind], "error_code": code}}


# what the model sees


_ERROR_TEXT = {
    "invalid_tool_input": "the tool input was invalid",
    "unavailable": "the tool is unavailable right now",
    "max_uses_exceeded": "the maximum number of uses of this tool was reached; answer with "
                         "what you have",
    "too_many_requests": "rate limited; try again later or answer with what you have",
    "query_too_long": "the query is too long",
    "request_too_large": "the request is too large",
    "url_too_long": "the URL is too long",
    "url_not_allowed": "fetching this URL is not allowed",
    "url_not_in_prior_context": "only URLs that appeared in the conversation can be fetched",
    "url_not_accessible": "the URL could not be fetched",
    "unsupported_content_type": "the content type of this URL is not supported",
    "content_too_large": "the content is too large",
}


def result_text(block: Mapping[str, Any]) -> tuple[str, bool]:
    """The text a result block gives the model, and whether it is an error."""
    content = block.get("content")
    if isinstance(content, dict) and str(content.get("type", "")).endswith("_error"):
        code = str(content.get("error_code") or "unavailable")
        return f"Error ({code}): {_ERROR_TEXT.get(code, code)}", True
    if block.get("type") == "web_search_tool_result":
        lines: list[str] = []
        for n, hit in enumerate(content if isinstance(content, list) else [], 1):
            if not isinstance(hit, dict):
                continue
            head = f"[{n}] {hit.get('title') or ''}\nURL: {hit.get('url') or ''}"
            if hit.get("page_age"):
                head += f"\nAge: {hit['page_age']}"
            snippet = decode_content(hit.get("encrypted_content"))
            lines.append(f"{head}\n{snippet}" if snippet else head)
        return ("\n\n".join(lines) if lines else "No results."), False
    if isinstance(content, dict):
        url = content.get("url") or ""
        document = content.get("content")
        document = document if isinstance(document, dict) else {}
        source = document.get("source")
        source = source if isinstance(source, dict) else {}
        data = source.get("data") if source.get("type") == "text" else None
        title = document.get("title")
        head = f"URL: {url}" + (f"\nTitle: {title}" if title else "")
        if not isinstance(data, str):
            return f"{head}\n(binary content not shown)", False
        return f"{head}\n\n{data}", False
    return "No result.", True


# rewriting the request


def _is_result(block: Mapping[str, Any], names: Mapping[str, ServerTool]) -> bool:
    return block.get("type") in RESULT_TYPES.values()


def _convert_assistant(blocks: Sequence[Mapping[str, Any]], names: Mapping[str, ServerTool]
                       ) -> list[InputMessage]:
    """One assistant message → assistant/user messages without server-tool blocks."""
    out: list[InputMessage] = []
    current: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def close() -> None:
        nonlocal current, results
        if current:
            out.append(InputMessage("assistant", current))
        if results:
            out.append(InputMessage("user", results))
        current, results = [], []

    for block in blocks:
        kind = block.get("type")
        if kind == "server_tool_use" and block.get("name") in names:
            if results:
                close()
            current.append({"type": "tool_use", "id": block.get("id"),
                            "name": block.get("name"), "input": block.get("input") or {}})
        elif _is_result(block, names):
            text, is_error = result_text(block)
            result: dict[str, Any] = {"type": "tool_result",
                                      "tool_use_id": block.get("tool_use_id"),
                                      "content": text}
            if is_error:
                result["is_error"] = True
            results.append(result)
        else:
            if results:
                close()
            current.append(dict(block))
    close()
    return out


def rewrite_messages(messages: Sequence[InputMessage], names: Mapping[str, ServerTool]
                     ) -> list[InputMessage]:
    """
    ``messages`` with every server-tool call and result as a ``tool_use`` / ``tool_result``
    pair: an assistant message is split after the calls whose results it holds, the results
    going into a user message of their own (merged with a user message that follows, results
    first, as the API requires).
    """
    out: list[InputMessage] = []
    for msg in messages:
        pieces = (_convert_assistant(msg.blocks(), names)
                  if msg.role == "assistant" and isinstance(msg.content, list) else [msg])
        for piece in pieces:
            last = out[-1] if out else None
            if last is not None and last.role == piece.role == "user":
                out[-1] = InputMessage("user", [*last.blocks(), *piece.blocks()])
            else:
                out.append(piece)
    return out


def has_server_blocks(messages: Iterable[InputMessage]) -> bool:
    """Whether any assistant message holds server-tool blocks this stage converts."""
    return any(
        msg.role == "assistant" and isinstance(msg.content, list)
        and any(b.get("type") == "server_tool_use" or b.get("type") in RESULT_TYPES.values()
                for b in msg.content)
        for msg in messages
    )


def rewrite_request(request: MessagesRequest, tools: Sequence[ServerTool]) -> MessagesRequest:
    """``request`` as the backend gets it: function tools for ``tools``, no server blocks."""
    by_name = {t.name: t for t in tools}
    by_name.update({k: ServerTool(k, k, TYPE_PREFIXES[k]) for k in TYPE_PREFIXES
                    if k not in by_name})
    offered = []
    for tool in request.tools or ():
        kind = tool_kind(tool)
        match = next((t for t in tools if kind is not None and t.name == tool.get("name")),
                     None)
        if match is None:
            offered.append(tool)
        else:
            entry = function_tool(match)
            if "cache_control" in tool:
                entry["cache_control"] = tool["cache_control"]
            offered.append(entry)
    return attrs.evolve(request, tools=offered if request.tools is not None else None,
                        messages=rewrite_messages(request.messages, by_name))


def continue_request(request: MessagesRequest, turn: Sequence[Mapping[str, Any]]
                     ) -> MessagesRequest:
    """
    The client's ``request`` with the assistant turn so far appended (merged into a
    trailing assistant prefill), for the next upstream call of the same turn.
    """
    messages = list(request.messages)
    blocks = [dict(b) for b in turn]
    if messages and messages[-1].role == "assistant":
        blocks = [*messages[-1].blocks(), *blocks]
        messages.pop()
    messages.append(InputMessage("assistant", blocks))
    return attrs.evolve(request, messages=messages)


def conversation_text(request: MessagesRequest, turn: Iterable[Mapping[str, Any]]) -> str:
    """
    The text a fetchable URL must appear in (``url_not_in_prior_context``): what the user
    and the client's tools provided (system prompt, user turns, tool results) and the results
    of earlier searches and fetches; never what the model wrote itself, as the Anthropic API
    rules (a model must not be steered into sending data out through URLs it composes).
    """
    parts = [dumps(request.system).decode("utf-8") if request.system else ""]
    assistant_results: list[Mapping[str, Any]] = []
    for msg in request.messages:
        if msg.role == "assistant":
            assistant_results += [b for b in msg.blocks() if b.get("type") in _RESULT_TYPES]
        elif isinstance(msg.content, str):
            parts.append(msg.content)
        else:
            parts.append(dumps(msg.content).decode("utf-8"))
    for block in [*assistant_results, *turn]:
        if block.get("type") in _RESULT_TYPES:
            parts.append(dumps(dict(block)).decode("utf-8"))
            parts.append(result_text(block)[0])
    return "\n".join(parts)


_BOUNDARY = frozenset(" \t\r\n\"'<>()[]{}\\,;|")


def url_in_text(url: str, text: str) -> bool:
    """
    Whether ``url`` appears in ``text`` as a whole URL (not as the prefix of a longer one);
    ``https://a.example/`` also matches a mention of ``https://a.example``.
    """
    candidates = {url, url[:-1]} if url.endswith("/") and len(url) > 1 else {url}
    for candidate in candidates:
        start = text.find(candidate)
        while start >= 0:
            end = start + len(candidate)
            after = text[end:end + 1]
            if not after or after in _BOUNDARY or (
                    after in ".!?:" and (end + 1 == len(text) or text[end + 1] in _BOUNDARY)):
                return True
            start = text.find(candidate, start + 1)
    return False


def tool_input(block: Mapping[str, Any], key: str) -> str | None:
    """A string field of a tool call's input (``None`` when missing or not a string)."""
    value = block.get("input")
    if isinstance(value, str):  # a model that sent the arguments as a JSON string
        try:
            value = loads(value)
        except JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    field = value.get(key)
    return field.strip() if isinstance(field, str) and field.strip() else None
