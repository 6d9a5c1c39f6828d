"""
Hypothesis strategies for Messages requests: valid ones drawn from the schema (every block
type, tools, thinking, Claude-Code-shaped bodies) and mutations of them (types, nesting,
sizes, lone surrogates, numbers JSON cannot hold, wrong block types, enormous tool schemas).

A request is a JSON tree plus raw number texts: :func:`encode` writes the tree and splices
each ``RawNumber`` in verbatim, so bodies can carry ``1e999``, ``NaN`` or a 5,000-digit
integer, which no Python value serialises to.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import attrs
from hypothesis import strategies as st

MODELS = ["claude-sonnet-4-6", "sonnet", "demo-small", "claude-haiku-4-5"]
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
CHARS = st.characters(codec="utf-8") | SURROGATES
texts = st.text(CHARS, max_size=40)
short_texts = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1,
                      max_size=12)
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)
ids = st.from_regex(r"toolu_[A-Za-z0-9]{4,12}", fullmatch=True)


@attrs.frozen
class RawNumber:
    """JSON text written verbatim into the body (``1e999``, ``NaN``, huge integers, or
    nesting deeper than :mod:`json` can write)."""

    text: str


RAW_NUMBERS = st.sampled_from([
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 5000, "-" + "9" * 4400,
    "123456789012345678901234567890", "1.0e-400", "-0", "0.0", "4.7e308", "-1" + "0" * 400,
]).map(RawNumber)


def encode(body: Any) -> bytes:
    """The body as JSON bytes, with every :class:`RawNumber` spliced in verbatim."""
    raws: list[str] = []

    def default(value: Any) -> Any:
        if isinstance(value, RawNumber):
            raws.append(value.text)
            return f"__RAW_{len(raws) - 1}__"
        raise TypeError(type(value).__name__)

    text = json.dumps(body, default=default, ensure_ascii=True, allow_nan=True)
    for i, raw in enumerate(raws):
        text = text.replace(f'"__RAW_{i}__"', raw, 1)
    return text.encode("ascii")


# --- valid pieces -----------------------------------------------------------------------------

cache_control = st.just({"type": "ephemeral"}) | st.just({"type": "ephemeral", "ttl": "1h"})


def with_cache(block: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda b, cc: {**b, "cache_control": cc} if cc else b, block,
                     st.none() | cache_control)


text_block = with_cache(st.builds(lambda t: {"type": "text", "text": t}, texts))
b64 = st.sampled_from(["iVBORw0KGgo=", "R0lGODlhAQABAAAAACw=", "/9j/4AAQSkZJRgABAQ=="])
image_source = st.one_of(
    st.builds(lambda m, d: {"type": "base64", "media_type": m, "data": d},
              st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp"]), b64),
    st.builds(lambda u: {"type": "url", "url": f"https://example.com/{u}.png"}, short_texts),
    st.builds(lambda f: {"type": "file", "file_id": f"file_{f}"}, short_texts),
)
image_block = with_cache(st.builds(lambda s: {"type": "image", "source": s}, image_source))
document_source = st.one_of(
    st.builds(lambda d: {"type": "base64", "media_type": "application/pdf", "data": d}, b64),
    st.builds(lambda d: {"type": "text", "media_type": "text/plain", "data": d}, texts),
    st.builds(lambda c: {"type": "content", "content": c},
              texts | st.lists(text_block | image_block, max_size=2)),
    st.builds(lambda u: {"type": "url", "url": f"https://example.com/{u}.pdf"}, short_texts),
    st.builds(lambda f: {"type": "file", "file_id": f"file_{f}"}, short_texts),
)
document_block = with_cache(st.builds(
    lambda s, t, c: {"type": "document", "source": s, **({"title": t} if t else {}),
                     **({"citations": {"enabled": True}} if c else {})},
    document_source, st.none() | texts, st.booleans()))
search_result_block = st.builds(
    lambda s, t, c: {"type": "search_result", "source": s, "title": t, "content": c},
    short_texts, texts, st.lists(text_block, min_size=1, max_size=2))
json_leaf = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(
    allow_nan=False, allow_infinity=False, width=32) | texts
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(short_texts, inner, max_size=3), max_leaves=8)
tool_input = st.dictionaries(short_texts, json_value, max_size=4)
tool_use_block = st.builds(lambda i, n, x: {"type": "tool_use", "id": i, "name": n, "input": x},
                           ids, names, tool_input)
tool_result_content = texts | st.lists(
    text_block | image_block | document_block | search_result_block
    | st.builds(lambda n: {"type": "tool_reference", "tool_name": n}, names), max_size=3)
tool_result_block = with_cache(st.builds(
    lambda i, c, e: {"type": "tool_result", "tool_use_id": i, "content": c,
                     **({"is_error": e} if e is not None else {})},
    ids, tool_result_content, st.none() | st.booleans()))
thinking_block = st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s},
                           texts, short_texts)
redacted_block = st.builds(lambda d: {"type": "redacted_thinking", "data": d}, short_texts)
server_tool_use_block = st.builds(
    lambda i, x: {"type": "server_tool_use", "id": "srv" + i, "name": "web_search", "input": x},
    ids, tool_input)
web_search_result_block = st.builds(
    lambda i, t: {"type": "web_search_tool_result", "tool_use_id": "srv" + i, "content": [
        {"type": "web_search_result", "url": "https://example.com", "title": t,
         "encrypted_content": "enc"}]}, ids, texts)
container_upload_block = st.builds(lambda f: {"type": "container_upload", "file_id": f},
                                   short_texts)

user_blocks = st.lists(text_block | image_block | document_block | search_result_block
                       | tool_result_block | container_upload_block, min_size=1, max_size=4)
assistant_blocks = st.lists(text_block | thinking_block | redacted_block | tool_use_block
                            | server_tool_use_block | web_search_result_block,
                            min_size=1, max_size=4)


def message(role: str) -> st.SearchStrategy[dict[str, Any]]:
    content = {"user": user_blocks, "assistant": assistant_blocks,
               "system": st.lists(text_block, min_size=1, max_size=2)}[role]
    return st.builds(lambda c: {"role": role, "content": c}, texts.filter(bool) | content)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    turns = draw(st.integers(1, 5))
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(turns)]
    if turns > 2 and draw(st.booleans()):
        roles.insert(1, "system")
    if roles[-1] != "user" and draw(st.booleans()):
        roles.append("user")
    return [draw(message(r)) for r in roles]


schema_leaf = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"},
                               {"type": "boolean"}, {"type": "array", "items": {}},
                               {"enum": ["a", "b"]}, {"const": 3}, {"type": ["string", "null"]}])
schemas = st.recursive(
    schema_leaf,
    lambda inner: st.builds(
        lambda props, req: {"type": "object", "properties": props,
                            "required": [k for k in props if k in req]},
        st.dictionaries(names, inner, max_size=4), st.sets(names, max_size=3)),
    max_leaves=10,
).map(lambda s: s if s.get("type") == "object" else {"type": "object", "properties": {"v": s},
                                                       "required": ["v"]})
custom_tool = with_cache(st.builds(
    lambda n, d, s: {"name": n, "description": d, "input_schema": s}, names, texts, schemas))
server_tool = st.sampled_from([
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    {"type": "web_fetch_20250910", "name": "web_fetch"},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"type": "code_execution_20250825", "name": "code_execution"},
])
tools = st.lists(custom_tool | server_tool, min_size=1, max_size=5)
tool_choice = st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"},
                               {"type": "auto", "disable_parallel_tool_use": True}])
thinking = st.sampled_from([
    {"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}, {"type": "adaptive"},
    {"type": "adaptive", "display": "omitted"}, {"type": "between_tools"},
    {"type": "enabled", "budget_tokens": 2048, "display": "summarized"},
])
system = texts | st.lists(text_block, min_size=1, max_size=3)
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "system": system,
    "stream": st.booleans(),
    "stop_sequences": st.lists(short_texts, max_size=3),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 500),
    "tools": tools,
    "thinking": thinking,
    "metadata": st.builds(lambda u: {"user_id": u}, st.none() | texts),
    "output_config": st.sampled_from([{"effort": "low"}, {"effort": "max"}, {
        "format": {"type": "json_schema", "schema": {"type": "object"}}}]),
    "service_tier": st.sampled_from(["auto", "standard_only"]),
    "context_management": st.just({"edits": [{"type": "clear_thinking_20251015"}]}),
    "cache_control": cache_control,
}


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request the real API would accept (modulo model names): every field and block type."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(MODELS)),
                            "max_tokens": draw(st.integers(1, 200)),
                            "messages": draw(conversations())}
    for key in draw(st.sets(st.sampled_from(sorted(OPTIONAL)), max_size=6)):
        body[key] = draw(OPTIONAL[key])
    if "tools" in body and draw(st.booleans()):
        first = body["tools"][0]
        body["tool_choice"] = ({"type": "tool", "name": first["name"]} if draw(st.booleans())
                               else draw(tool_choice))
    return body


@st.composite
def claude_code_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Shaped like Claude Code's main-loop request (claude-code.md §3)."""
    reminder = {"type": "text", "text": "<system-reminder>\nContext.\n</system-reminder>"}
    first = [reminder, {"type": "text", "text": draw(texts.filter(bool))}]
    turns: list[dict[str, Any]] = [{"role": "user", "content": first}]
    for _ in range(draw(st.integers(0, 3))):
        tid = draw(ids)
        turns.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": draw(texts), "signature": "sig"},
            {"type": "text", "text": draw(texts)},
            {"type": "tool_use", "id": tid, "name": "Read", "input": {"file_path": "/a.py"}}]})
        turns.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid, "content": draw(texts)}]})
    read = {"name": "Read", "description": "Read a file", "input_schema": {
        "type": "object", "properties": {"file_path": {"type": "string"}},
        "required": ["file_path"], "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#"}}
    return {
        "model": "claude-sonnet-4-6", "max_tokens": 64000, "stream": draw(st.booleans()),
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2"},
                   {"type": "text", "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": turns, "tools": [read, *draw(st.lists(custom_tool, max_size=6))],
        "metadata": {"user_id": '{"device_id":"d","session_id":"s"}'},
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }


requests = valid_requests() | claude_code_requests()

# --- mutations --------------------------------------------------------------------------------

BLOCK_TYPES = ["text", "image", "document", "tool_use", "tool_result", "thinking",
               "redacted_thinking", "search_result", "server_tool_use", "container_upload",
               "web_search_tool_result", "hologram", "", "TEXT", "tool_reference"]
hostile_strings = st.one_of(
    st.text(SURROGATES, min_size=1, max_size=4),
    st.integers(1, 3).map(lambda n: "x" * (100_000 * n)),
    st.just("\x00\u2028\ufeff"), st.just("<system-reminder>"), texts,
)
hostile_values = st.one_of(
    json_value, RAW_NUMBERS, hostile_strings, st.just({}), st.just([]),
    st.just({"type": {"type": "text"}}), st.integers(-(2**70), 2**70),
    st.lists(st.just("x"), min_size=2000, max_size=2000),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of the tree (the root is ``()``)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def deep(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def enormous_schema(kind: str) -> dict[str, Any]:
    if kind == "deep":
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(600):
            schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
        return schema
    return {"type": "object", "required": [f"p{i}" for i in range(3000)],
            "properties": {f"p{i}": {"type": "string", "description": "d" * 20}
                           for i in range(3000)}}


@st.composite
def mutated_requests(draw: st.DrawFn) -> Any:
    """A valid request with one to three hostile edits."""
    body: Any = json.loads(json.dumps(draw(requests)))
    def hostile() -> Any:
        # A copy: st.just() hands out one shared object, which edits would otherwise change
        # for later examples (or append to itself).
        return copy.deepcopy(draw(hostile_values))

    for _ in range(draw(st.integers(1, 3))):
        every = paths(body)
        path = draw(st.sampled_from(every))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "nest", "block_type",
                                   "schema", "duplicate", "role"]))
        node = _get(body, path)
        if op == "replace":
            body = _set(body, path, hostile())
        elif op == "delete" and path:
            del _get(body, path[:-1])[path[-1]]
        elif op == "add" and isinstance(node, dict):
            node[draw(st.sampled_from(["type", "source", "content", "input", "text", "zz",
                                       "cache_control", "citations", "name"]))] = hostile()
        elif op == "add" and isinstance(node, list):
            node.append(hostile())
        elif op == "nest":
            depth = draw(st.sampled_from([120, 127, 200, 300, 1000, 1030, 100_000]))
            kind = draw(st.sampled_from(["list", "dict"]))
            if depth <= 300:
                body = _set(body, path, deep(depth, node, kind))
            else:  # deeper than json.dumps can write: splice the text in
                head, tail = ("[", "]") if kind == "list" else ('{"a":', "}")
                inner = encode(node).decode("ascii")
                body = _set(body, path, RawNumber(head * depth + inner + tail * depth))
            break  # the tree is now too deep to walk or copy again: this is the last edit
        elif op == "block_type" and isinstance(node, dict) and "type" in node:
            node["type"] = draw(st.sampled_from(BLOCK_TYPES))
        elif op == "schema" and isinstance(body, dict):
            body["tools"] = [{"name": "Huge", "input_schema": enormous_schema(
                draw(st.sampled_from(["deep", "wide"])))}]
        elif op == "role" and isinstance(node, dict) and "role" in node:
            node["role"] = draw(st.sampled_from(["user", "assistant", "system", "tool"]))
        elif op == "duplicate" and isinstance(node, list) and node:
            node.extend([node[0]] * draw(st.integers(1, 300)))
    return body
