"""
The one check of a Messages request body, before any stage reads it.

Derived from the Anthropic Messages schema (the SDK's ``*Param`` types and
anthropic-messages.md §3-§7): every content-block type and the fields the relay or an
upstream reads, tools, ``tool_choice``, ``thinking``, ``metadata``, ``output_config``,
numeric ranges (finite numbers only) and caps on sizes and nesting. After it passes, every
value downstream code looks at has the JSON type the schema gives it, so token estimation,
translation, the demo model and operators' stages never meet a shape they do not expect.

Problems are reported the way the real API does, a dotted path and a plain-words reason
(``messages.3.content.1.source: expected an object, got a string``), several at once
(at most :data:`MAX_PROBLEMS`), as one 400 ``invalid_request_error``.

Deliberate choices (README "Request validation"):

- Unknown *top-level* fields are accepted and kept (R-X3); unknown *keys inside* a known
  block are accepted too (new betas add them), since nothing reads them. Their values are
  only bound by the nesting limit.
- Unknown *block types* are rejected, as the real API does: the accepted set is every block
  type of the SDK's (beta) request types; a block the relay does not know would reach a
  translator that cannot handle it.
- ``max_tokens`` must be at least 0. Issue 7.13 asked for at least 1, but the official SDK
  (and anthropic-messages.md) document 0 as valid: it pre-warms the prompt cache without
  generating anything. The SDK wins; the ``translate`` stage answers 0 with an empty
  message without calling a backend that has no cache to warm.
- Nesting is bounded by :data:`MAX_DEPTH` over the whole document. The check is
  ``orjson.dumps`` of the body wrapped to the encoder's own limit (~40 µs on an 83 KB
  Claude Code body, where a Python walk costs ~200 µs); only when that fails does a Python
  walk find the path or clear the body (lone surrogates and big integers also fail it).
  ``tools`` (three quarters of such a body) is written on its own, one level deeper, and
  the length of its JSON kept for the token estimate (:func:`validated_tools_length`), so
  that :mod:`txrelay.protocol.tokens` need not write it again.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from txrelay.protocol.errors import invalid_request
from txrelay.protocol.structure import json_type_name

#: Longest accepted model name (the name is echoed in every response).
MAX_MODEL_LENGTH = 256
#: The real API's limit on ``messages``.
MAX_MESSAGES = 100_000
MAX_STOP_SEQUENCES = 256
MAX_TOOLS = 1_000
#: Longest tool name, ``tool_choice.name`` or ``tool_use.name``.
MAX_NAME_LENGTH = 256
#: Deepest nesting of arrays and objects in the body (the body itself is level 1).
MAX_DEPTH = 128
#: ``max_tokens``, ``top_k`` and ``budget_tokens`` beyond this are not numbers a model uses.
MAX_INT = 2**31 - 1
MIN_MAX_TOKENS = 0
#: At most this many problems are listed in one error.
MAX_PROBLEMS = 10

ROLES = ("user", "assistant", "system")
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
THINKING_DISPLAYS = ("summarized", "omitted")
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
EFFORTS = ("low", "medium", "high", "xhigh", "max")

# orjson refuses to write more than 254 nested containers; wrapping the body in this many
# arrays makes that refusal mean "deeper than MAX_DEPTH".
_ENCODER_DEPTH = 254
_WRAP = _ENCODER_DEPTH - MAX_DEPTH


class _TooMany(Exception):
    """Enough problems collected; stop walking."""


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}" if path else message)
        if len(self.lines) >= MAX_PROBLEMS:
            raise _TooMany


def shown(value: object) -> str:
    """A value as an error message shows it: short strings quoted, others by JSON type."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "…"
        return orjson.dumps(text.encode("utf-8", "replace").decode("utf-8")).decode()
    if isinstance(value, bool) or value is None:
        return json_type_name(value)
    if isinstance(value, int | float) and abs(value) < 1e15:  # no float() of a huge int
        return repr(value)
    return json_type_name(value)


def _at(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _expected(kind: str, value: object) -> str:
    return f"expected {kind}, got {json_type_name(value)}"


def _one_of(choices: tuple[str, ...], value: object) -> str:
    return f"expected one of {', '.join(choices)}, got {shown(value)}"


# --- scalar fields ----------------------------------------------------------------------------


def _str(p: _Problems, obj: Mapping[str, Any], key: str, path: str, *,
         required: bool = True, nullable: bool = False, max_len: int | None = None,
         choices: tuple[str, ...] | None = None) -> None:
    if key not in obj:
        if required:
            p.add(_at(path, key), "field required")
        return
    value = obj[key]
    if value is None and nullable:
        return
    where = _at(path, key)
    if not isinstance(value, str):
        p.add(where, _expected("a string", value))
    elif choices is not None and value not in choices:
        p.add(where, _one_of(choices, value))
    elif max_len is not None and len(value) > max_len:
        p.add(where, f"must be at most {max_len} characters long, got {len(value)}")


def _bool(p: _Problems, obj: Mapping[str, Any], key: str, path: str, *,
          nullable: bool = False) -> None:
    if key in obj and not isinstance(obj[key], bool) and not (nullable and obj[key] is None):
        p.add(_at(path, key), _expected("a boolean", obj[key]))


def _int(p: _Problems, obj: Mapping[str, Any], key: str, path: str, *, minimum: int,
         required: bool = False, nullable: bool = False) -> None:
    if key not in obj:
        if required:
            p.add(_at(path, key), "field required")
        return
    value = obj[key]
    where = _at(path, key)
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(where, _expected("an integer", value))
    elif value < minimum:
        p.add(where, f"must be greater than or equal to {minimum}, got {shown(value)}")
    elif value > MAX_INT:
        p.add(where, f"must be at most {MAX_INT}")


def _unit_float(p: _Problems, obj: Mapping[str, Any], key: str) -> None:
    if key not in obj or obj[key] is None:
        return
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        p.add(key, _expected("a number", value))
    elif isinstance(value, float) and not math.isfinite(value):
        p.add(key, "must be a finite number")
    elif not 0 <= value <= 1:
        p.add(key, f"must be between 0 and 1, got {shown(value)}")


def _obj(p: _Problems, obj: Mapping[str, Any], key: str, path: str, *,
         required: bool = False, nullable: bool = True) -> dict[str, Any] | None:
    """The object at ``obj[key]``, or ``None`` (a problem is recorded if it is not one)."""
    if key not in obj:
        if required:
            p.add(_at(path, key), "field required")
        return None
    value = obj[key]
    if value is None and nullable and not required:
        return None
    if not isinstance(value, dict):
        p.add(_at(path, key), _expected("an object", value))
        return None
    return value


def _container(p: _Problems, obj: Mapping[str, Any], key: str, path: str) -> None:
    """A required field that may be an object or an array (server-tool result content)."""
    if key not in obj:
        p.add(_at(path, key), "field required")
    elif not isinstance(obj[key], dict | list):
        p.add(_at(path, key), _expected("an object or an array", obj[key]))


def _cache_control(p: _Problems, block: Mapping[str, Any], path: str) -> None:
    cc = _obj(p, block, "cache_control", path)
    if cc is not None:
        _str(p, cc, "type", _at(path, "cache_control"), choices=("ephemeral",))
        _str(p, cc, "ttl", _at(path, "cache_control"), required=False, nullable=True)


# --- content blocks ---------------------------------------------------------------------------

BlockCheck = Callable[[_Problems, dict[str, Any], str], None]


def _text(p: _Problems, b: dict[str, Any], path: str) -> None:
    if type(b.get("text")) is str and b.get("citations") is None:
        return  # the common case, decided without the helpers
    _str(p, b, "text", path)
    citations = b.get("citations")
    if citations is not None:
        if not isinstance(citations, list):
            p.add(f"{path}.citations", _expected("an array", citations))
        else:
            for i, c in enumerate(citations):
                if not isinstance(c, dict):
                    p.add(f"{path}.citations.{i}", _expected("an object", c))
                else:
                    _str(p, c, "type", f"{path}.citations.{i}")


def _image_source(p: _Problems, source: dict[str, Any], path: str) -> None:
    kind = source.get("type")
    if kind == "base64":
        _str(p, source, "media_type", path, choices=IMAGE_MEDIA_TYPES)
        _str(p, source, "data", path)
    elif kind == "url":
        _str(p, source, "url", path)
    elif kind == "file":
        _str(p, source, "file_id", path)
    elif "type" not in source:
        p.add(f"{path}.type", "field required")
    else:
        p.add(f"{path}.type", _one_of(("base64", "url", "file"), kind))


def _image(p: _Problems, b: dict[str, Any], path: str) -> None:
    source = _obj(p, b, "source", path, required=True)
    if source is not None:
        _image_source(p, source, f"{path}.source")


def _document(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "title", path, required=False, nullable=True)
    _str(p, b, "context", path, required=False, nullable=True)
    _obj(p, b, "citations", path)
    source = _obj(p, b, "source", path, required=True)
    if source is None:
        return
    sp = f"{path}.source"
    kind = source.get("type")
    if kind == "base64":
        _str(p, source, "media_type", sp, choices=("application/pdf",))
        _str(p, source, "data", sp)
    elif kind == "text":
        _str(p, source, "media_type", sp, choices=("text/plain",))
        _str(p, source, "data", sp)
    elif kind == "content":
        _content(p, source, "content", sp, _DOCUMENT_CONTENT, allow_string=True)
    elif kind == "url":
        _str(p, source, "url", sp)
    elif kind == "file":
        _str(p, source, "file_id", sp)
    elif "type" not in source:
        p.add(f"{sp}.type", "field required")
    else:
        p.add(f"{sp}.type", _one_of(("base64", "text", "content", "url", "file"), kind))


def _search_result(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "source", path)
    _str(p, b, "title", path)
    _obj(p, b, "citations", path)
    _content(p, b, "content", path, _TEXT_ONLY, allow_string=False)


def _tool_use(p: _Problems, b: dict[str, Any], path: str) -> None:
    name = b.get("name")
    if (type(b.get("id")) is str and type(name) is str and len(name) <= MAX_NAME_LENGTH
            and type(b.get("input")) is dict and "caller" not in b):
        return
    _str(p, b, "id", path)
    _str(p, b, "name", path, max_len=MAX_NAME_LENGTH)
    _obj(p, b, "input", path, required=True)
    _obj(p, b, "caller", path)


def _tool_result(p: _Problems, b: dict[str, Any], path: str) -> None:
    if (type(b.get("tool_use_id")) is str and type(b.get("content")) is str
            and type(b.get("is_error", False)) is bool):
        return
    _str(p, b, "tool_use_id", path)
    _bool(p, b, "is_error", path, nullable=True)
    if b.get("content") is not None:
        _content(p, b, "content", path, _TOOL_RESULT_CONTENT, allow_string=True)


def _thinking(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "thinking", path)
    _str(p, b, "signature", path)


def _redacted_thinking(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "data", path)


def _server_tool_result(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "tool_use_id", path)
    _container(p, b, "content", path)


def _mcp_tool_use(p: _Problems, b: dict[str, Any], path: str) -> None:
    _tool_use(p, b, path)
    _str(p, b, "server_name", path)


def _mcp_tool_result(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "tool_use_id", path)
    _bool(p, b, "is_error", path, nullable=True)
    if b.get("content") is not None:
        _content(p, b, "content", path, _TEXT_ONLY, allow_string=True)


def _file_id(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "file_id", path)


def _tool_reference(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "tool_name", path)


def _compaction(p: _Problems, b: dict[str, Any], path: str) -> None:
    _str(p, b, "content", path, required=False, nullable=True)


def _type_only(p: _Problems, b: dict[str, Any], path: str) -> None:
    """Beta blocks no translator reads: the nesting limit is their only bound."""


_SERVER_TOOL_RESULTS = (
    "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
    "tool_search_tool_result", "advisor_tool_result",
)

#: Every block type a message may hold, with its check.
MESSAGE_BLOCKS: dict[str, BlockCheck] = {
    "text": _text,
    "image": _image,
    "document": _document,
    "search_result": _search_result,
    "thinking": _thinking,
    "redacted_thinking": _redacted_thinking,
    "tool_use": _tool_use,
    "tool_result": _tool_result,
    "server_tool_use": _tool_use,
    **dict.fromkeys(_SERVER_TOOL_RESULTS, _server_tool_result),
    "container_upload": _file_id,
    "mcp_tool_use": _mcp_tool_use,
    "mcp_tool_result": _mcp_tool_result,
    "compaction": _compaction,
    "tool_addition": _type_only,
    "tool_removal": _type_only,
    "mcp_tool_listing": _type_only,
    "fallback": _type_only,
}
_TOOL_RESULT_CONTENT: dict[str, BlockCheck] = {
    "text": _text, "image": _image, "document": _document, "search_result": _search_result,
    "tool_reference": _tool_reference, "browser_state": _type_only,
}
_DOCUMENT_CONTENT: dict[str, BlockCheck] = {"text": _text, "image": _image}
_TEXT_ONLY: dict[str, BlockCheck] = {"text": _text}


def _blocks(p: _Problems, blocks: list[Any], path: str, allowed: Mapping[str, BlockCheck]
            ) -> None:
    for j, block in enumerate(blocks):
        bp = f"{path}.{j}"
        if not isinstance(block, dict):
            p.add(bp, _expected("an object", block))
            continue
        kind = block.get("type")
        check = allowed.get(kind) if isinstance(kind, str) else None
        if check is None:
            if "type" not in block:
                p.add(f"{bp}.type", "field required")
            elif not isinstance(kind, str):
                p.add(f"{bp}.type", _expected("a string", kind))
            else:
                p.add(f"{bp}.type", f"unknown content block type {shown(kind)} here; "
                      f"expected one of {', '.join(allowed)}")
            continue
        check(p, block, bp)
        if "cache_control" in block:
            _cache_control(p, block, bp)


def _content(p: _Problems, obj: Mapping[str, Any], key: str, path: str,
             allowed: Mapping[str, BlockCheck], *, allow_string: bool) -> None:
    where = _at(path, key)
    if key not in obj:
        p.add(where, "field required")
        return
    value = obj[key]
    if isinstance(value, list):
        _blocks(p, value, where, allowed)
    elif not (allow_string and isinstance(value, str)):
        p.add(where, _expected("a string or an array" if allow_string else "an array", value))


# --- messages, system, tools ------------------------------------------------------------------


def _messages(p: _Problems, messages: object) -> None:
    if not isinstance(messages, list):
        p.add("messages", _expected("an array", messages))
        return
    if not messages:
        p.add("messages", "at least one message is required")
    elif len(messages) > MAX_MESSAGES:
        p.add("messages", f"at most {MAX_MESSAGES} messages are allowed, got {len(messages)}")
        return
    for i, msg in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(msg, dict):
            p.add(path, _expected("an object", msg))
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role not in ROLES or type(role) is not str:
            _str(p, msg, "role", path, choices=ROLES)
        allowed = _TEXT_ONLY if role == "system" else MESSAGE_BLOCKS
        if type(content) is list:
            _blocks(p, content, f"{path}.content", allowed)
        elif type(content) is not str:
            _content(p, msg, "content", path, allowed, allow_string=True)


def _system(p: _Problems, system: object) -> None:
    if isinstance(system, list):
        _blocks(p, system, "system", _TEXT_ONLY)
    elif not isinstance(system, str):
        p.add("system", _expected("a string or an array", system))


def _tools(p: _Problems, tools: object) -> None:
    if not isinstance(tools, list):
        p.add("tools", _expected("an array", tools))
        return
    if len(tools) > MAX_TOOLS:
        p.add("tools", f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}")
        return
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            p.add(path, _expected("an object", tool))
            continue
        kind = tool.get("type")
        name = tool.get("name")
        if (kind is None and type(name) is str and 0 < len(name) <= MAX_NAME_LENGTH
                and type(tool.get("input_schema")) is dict
                and type(tool.get("description", "")) is str
                and "strict" not in tool and "cache_control" not in tool):
            continue  # the common custom tool, decided without the helpers
        if kind is None or kind == "custom":
            _str(p, tool, "name", path, max_len=MAX_NAME_LENGTH)
            if tool.get("name") == "":
                p.add(f"{path}.name", "must not be empty")
            _obj(p, tool, "input_schema", path, required=True)
            _str(p, tool, "description", path, required=False, nullable=True)
            _bool(p, tool, "strict", path, nullable=True)
        elif not isinstance(kind, str):
            p.add(f"{path}.type", _expected("a string", kind))
        else:
            # Anthropic-defined tools (bash_20250124, web_search_…): versioned types keep
            # appearing, so any type name is accepted; translators drop what they cannot run.
            _str(p, tool, "name", path, required=False, max_len=MAX_NAME_LENGTH)
        if "cache_control" in tool:
            _cache_control(p, tool, path)


def _tool_choice(p: _Problems, choice: object) -> None:
    if not isinstance(choice, dict):
        p.add("tool_choice", _expected("an object", choice))
        return
    _str(p, choice, "type", "tool_choice", choices=TOOL_CHOICE_TYPES)
    if choice.get("type") == "tool":
        _str(p, choice, "name", "tool_choice", max_len=MAX_NAME_LENGTH)
    _bool(p, choice, "disable_parallel_tool_use", "tool_choice", nullable=True)


def _thinking_config(p: _Problems, thinking: object) -> None:
    if not isinstance(thinking, dict):
        p.add("thinking", _expected("an object", thinking))
        return
    _str(p, thinking, "type", "thinking", choices=THINKING_TYPES)
    if thinking.get("type") == "enabled":
        _int(p, thinking, "budget_tokens", "thinking", minimum=1, required=True)
    _str(p, thinking, "display", "thinking", required=False, nullable=True,
         choices=THINKING_DISPLAYS)


def _output_config(p: _Problems, config: object) -> None:
    if not isinstance(config, dict):
        p.add("output_config", _expected("an object", config))
        return
    _str(p, config, "effort", "output_config", required=False, nullable=True, choices=EFFORTS)
    fmt = _obj(p, config, "format", "output_config")
    if fmt is not None:
        _str(p, fmt, "type", "output_config.format", choices=("json_schema",))
        _obj(p, fmt, "schema", "output_config.format", required=True)


def _metadata(p: _Problems, metadata: object) -> None:
    if not isinstance(metadata, dict):
        p.add("metadata", _expected("an object", metadata))
        return
    _str(p, metadata, "user_id", "metadata", required=False, nullable=True)


def _stop_sequences(p: _Problems, stops: object) -> None:
    if not isinstance(stops, list):
        p.add("stop_sequences", _expected("an array", stops))
        return
    if len(stops) > MAX_STOP_SEQUENCES:
        p.add("stop_sequences", f"at most {MAX_STOP_SEQUENCES} are allowed, got {len(stops)}")
        return
    for i, s in enumerate(stops):
        if not isinstance(s, str):
            p.add(f"stop_sequences.{i}", _expected("a string", s))


# --- nesting ----------------------------------------------------------------------------------


class _Chain(threading.local):
    """Per thread, ``levels`` nested one-item arrays whose innermost slot takes a value."""

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.outer: list[Any] = [None]
        self.inner = self.outer
        for _ in range(levels - 1):
            nxt: list[Any] = [None]
            self.inner[0] = nxt
            self.inner = nxt

    def dumps(self, value: Any) -> bytes:
        """``orjson.dumps`` of ``value`` at this depth (:class:`TypeError` when too deep)."""
        self.inner[0] = value
        try:
            return orjson.dumps(self.outer)
        finally:
            self.inner[0] = None


_chain = _Chain(_WRAP)
#: For a body's ``tools``, one level below the body.
_tools_chain = _Chain(_WRAP + 1)


class _ToolsLength(threading.local):
    """The ``tools`` list last validated on this thread and the length of its JSON."""

    tools: list[Any] | None = None
    length = 0


_tools_length = _ToolsLength()


def validated_tools_length(tools: object) -> int | None:
    """
    ``len(orjson.dumps(tools))`` if ``tools`` is the list :func:`validate_request` checked
    last on this thread (it wrote it then), else ``None``.

    The pipeline changes a request by replacing it (``Exchange.request``, a new
    :class:`~txrelay.protocol.anthropic.MessagesRequest` from ``attrs.evolve``): a stage
    that offers other tools passes a new list, which this does not recognise.
    """
    memo = _tools_length
    return memo.length if memo.tools is tools and tools is not None else None


def too_deep_path(body: dict[str, Any] | list[Any]) -> str | None:
    """
    The path of the first value nested deeper than :data:`MAX_DEPTH` (``body`` is level 1),
    else ``None``; also used on upstream answers.
    """
    try:
        _chain.dumps(body)
        return None
    except TypeError:
        return _walk(body)


def _walk(body: dict[str, Any] | list[Any]) -> str | None:
    """:func:`too_deep_path` the slow way: too deep, or lone surrogates / big integers."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            return path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, _at(path, key)))
    return None


# --- the request ------------------------------------------------------------------------------


def validate_request(body: dict[str, Any], *, count_tokens: bool = False) -> None:
    """
    Check a decoded ``POST /v1/messages`` (or ``count_tokens``) body against the schema.

    :param body: the decoded JSON object.
    :param count_tokens: a ``count_tokens`` body (``max_tokens`` and ``stream`` are neither
        required nor checked; they are not part of it).
    :raises RelayError: a 400 ``invalid_request_error`` listing the problems with their paths.
    """
    p = _Problems()
    with contextlib.suppress(_TooMany):
        _check(p, body, count_tokens)
    if p.lines:
        raise invalid_request("; ".join(p.lines))


def _nesting(body: dict[str, Any]) -> str | None:
    """:func:`too_deep_path` of a request body; remembers the length of its ``tools``."""
    memo = _tools_length
    memo.tools = None
    tools = body.get("tools")
    if type(tools) is not list or not tools:
        return too_deep_path(body)
    # ``tools`` one level deeper than the rest: together the same bound as the whole body.
    rest = {k: v for k, v in body.items() if k != "tools"}
    try:
        _chain.dumps(rest)
        length = len(_tools_chain.dumps(tools)) - 2 * _tools_chain.levels
    except TypeError:
        return _walk(body)
    memo.tools, memo.length = tools, length
    return None


def _check(p: _Problems, body: dict[str, Any], count_tokens: bool) -> None:
    deep = _nesting(body)
    if deep is not None:
        # Nothing else is looked at: a walker would only meet the same nesting.
        parts = deep.split(".")
        where = ".".join(parts[:8]) + (".…" if len(parts) > 8 else "")
        p.add(where, f"nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)")
        return
    _str(p, body, "model", "", max_len=MAX_MODEL_LENGTH)
    if body.get("model") == "":
        p.add("model", "must not be empty")
    if not count_tokens:
        _int(p, body, "max_tokens", "", minimum=MIN_MAX_TOKENS, required=True)
        _bool(p, body, "stream", "", nullable=True)
    if "messages" not in body:
        p.add("messages", "field required")
    else:
        _messages(p, body["messages"])
    if body.get("system") is not None:
        _system(p, body["system"])
    if body.get("stop_sequences") is not None:
        _stop_sequences(p, body["stop_sequences"])
    _unit_float(p, body, "temperature")
    _unit_float(p, body, "top_p")
    if body.get("top_k") is not None:
        _int(p, body, "top_k", "", minimum=0)
    if body.get("tools") is not None:
        _tools(p, body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(p, body["tool_choice"])
    if body.get("thinking") is not None:
        _thinking_config(p, body["thinking"])
    if body.get("metadata") is not None:
        _metadata(p, body["metadata"])
    if body.get("output_config") is not None:
        _output_config(p, body["output_config"])
    if body.get("cache_control") is not None:
        _cache_control(p, body, "")
