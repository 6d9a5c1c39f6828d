"""
JSON Schema → the OpenAPI-subset ``Schema`` Gemini accepts for function parameters.

An **allow-list** (gemini.md §3.1): a single keyword Gemini does not know anywhere in a schema
fails the whole request (``Unknown name "..." ... Cannot find field``), and real tool schemas
(MCP servers, Zod, Pydantic) carry many (``$schema``, ``additionalProperties``,
``propertyNames``, ``const``, ``oneOf``, unknown ``format`` values...). So every node is rebuilt
from the keywords below; what cannot be expressed is translated where a faithful form exists
(``type`` lists → ``nullable``/``anyOf``, exclusive bounds → inclusive, ``const`` → ``enum``,
``oneOf`` → ``anyOf``, ``allOf`` merged, ``$ref`` inlined) and dropped otherwise.

``$ref`` inlining is guarded: a reference cycle or a nesting deeper than :data:`MAX_DEPTH`
becomes ``{"type": "object"}``, and expansion stops after :data:`MAX_NODES` nodes, so a hostile
schema cannot make the request explode.
"""

from __future__ import annotations

import math
from typing import Any

#: Every keyword a cleaned schema may contain.
ALLOWED_KEYWORDS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "minItems",
    "maxItems", "properties", "required", "minProperties", "maxProperties", "minLength",
    "maxLength", "pattern", "minimum", "maximum", "example", "default", "anyOf",
    "propertyOrdering",
})
TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
#: ``format`` values Gemini accepts, per type; anything else is dropped.
FORMATS = {
    "string": frozenset({"enum", "date-time"}),
    "integer": frozenset({"int32", "int64"}),
    "number": frozenset({"float", "double"}),
}
MAX_DEPTH = 24
MAX_NODES = 4000

_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_STRINGS = ("title", "description", "pattern")
_ANY = {"type": "object"}


def clean_schema(schema: Any) -> dict[str, Any]:
    """The Gemini ``Schema`` for JSON Schema ``schema`` (any input; never raises)."""
    cleaner = _Cleaner(schema if isinstance(schema, dict) else {})
    return cleaner.node(schema, 0, ())


def clean_parameters(schema: Any) -> dict[str, Any] | None:
    """
    A function's ``parameters``: an object schema, or ``None`` when it has no properties
    (Gemini rejects an OBJECT with empty ``properties``; the declaration then omits the field).
    """
    cleaned = clean_schema(schema)
    if cleaned.get("type") != "object" or not cleaned.get("properties"):
        return None
    return cleaned


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _enum_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _json_value(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON (``default``/``example`` are passed through as is)."""
    if depth > 8:
        return False
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, list):
        return len(value) <= 64 and all(_json_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(
            isinstance(k, str) and _json_value(v, depth + 1) for k, v in value.items()
        )
    return False


class _Cleaner:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.nodes = 0

    def resolve(self, ref: str) -> Any:
        """A local JSON pointer (``#/$defs/X``, ``#/definitions/X``, ``#``); else ``None``."""
        if not ref.startswith("#"):
            return None
        target: Any = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else ():
            token = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                return None
        return target

    def node(self, schema: Any, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        self.nodes += 1
        if not isinstance(schema, dict) or depth > MAX_DEPTH or self.nodes > MAX_NODES:
            return dict(_ANY) if isinstance(schema, dict) else {}
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref in refs:
                return dict(_ANY)  # a cycle: stop here
            target = self.resolve(ref)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            merged = {**target, **siblings} if isinstance(target, dict) else siblings
            return self.node(merged, depth + 1, (*refs, ref))
        for key in ("allOf",):
            parts = schema.get(key)
            if isinstance(parts, list) and parts:
                return self.node(self.merge_all(schema, parts, depth, refs), depth + 1, refs)
        types = schema.get("type")
        if isinstance(types, list):
            return self.type_list(schema, types, depth, refs)
        out: dict[str, Any] = {}
        nullable = schema.get("nullable") is True
        kind = types.lower() if isinstance(types, str) else None
        if kind == "null":
            nullable = True
            kind = None
        elif kind not in TYPES:
            kind = None
        variants = schema.get("anyOf")
        if not isinstance(variants, list):
            variants = schema.get("oneOf")
        if isinstance(variants, list) and variants:
            cleaned: list[dict[str, Any]] = []
            for v in variants:
                if isinstance(v, dict) and (v.get("type") == "null" or v.get("const", 0) is None):
                    nullable = True
                    continue
                c = self.node(v, depth + 1, refs)
                if c not in cleaned:
                    cleaned.append(c)
            if len(cleaned) == 1:
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                single = {**cleaned[0], **self.node(rest, depth + 1, refs)} if rest else cleaned[0]
                if nullable:
                    single["nullable"] = True
                return single
            if cleaned:
                out["anyOf"] = cleaned
        if kind is None and "anyOf" not in out:
            kind = self.infer_type(schema)
        if kind is not None:
            out["type"] = kind
        if nullable:
            out["nullable"] = True
        for key in _STRINGS:
            if isinstance(schema.get(key), str):
                out[key] = schema[key]
        fmt = schema.get("format")
        if kind is not None and isinstance(fmt, str) and fmt in FORMATS.get(kind, ()):
            out["format"] = fmt
        for key in ("default", "example"):
            if key in schema and _json_value(schema[key]):
                out[key] = schema[key]
        if "example" not in out:
            examples = schema.get("examples")
            if isinstance(examples, list) and examples and _json_value(examples[0]):
                out["example"] = examples[0]
        self.enum(schema, out)
        for key in _COUNTS:
            if _count(schema.get(key)):
                out[key] = schema[key]
        self.bounds(schema, kind, out)
        if kind == "array" or (kind is None and "items" in schema):
            out["items"] = self.items(schema, depth, refs)
        if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
            self.properties(schema, depth, refs, out)
        return out

    def infer_type(self, schema: dict[str, Any]) -> str | None:
        if isinstance(schema.get("properties"), dict):
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if "const" in schema or "enum" in schema:
            return "string"
        return None

    def merge_all(
        self, schema: dict[str, Any], parts: list[Any], depth: int, refs: tuple[str, ...]
    ) -> dict[str, Any]:
        """``allOf``: one schema with the union of properties and required names."""
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        # The outer schema's own fields may be of any JSON type: only well-typed ones count.
        given_props, given_required = merged.get("properties"), merged.get("required")
        props: dict[str, Any] = dict(given_props) if isinstance(given_props, dict) else {}
        required: list[Any] = list(given_required) if isinstance(given_required, list) else []
        for given in parts:
            part = given
            if isinstance(given, dict) and isinstance(given.get("$ref"), str):
                ref = given["$ref"]
                target = None if ref in refs else self.resolve(ref)
                part = {**target, **given} if isinstance(target, dict) else {}
                part.pop("$ref", None)
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("properties"), dict):
                props.update(part["properties"])
            if isinstance(part.get("required"), list):
                required.extend(part["required"])
            for k, v in part.items():
                if k not in ("properties", "required", "allOf"):
                    merged.setdefault(k, v)
        if props:
            merged["properties"] = props
        if required:
            merged["required"] = required
        return merged

    def type_list(
        self, schema: dict[str, Any], types: list[Any], depth: int, refs: tuple[str, ...]
    ) -> dict[str, Any]:
        """``type: [T, "null"]`` → ``nullable``; several types → ``anyOf``."""
        names: list[str] = []
        nullable = False
        for given in types:
            if not isinstance(given, str):
                continue
            t = given.lower()
            if t == "null":
                nullable = True
            elif t in TYPES and t not in names:
                names.append(t)
        rest = {k: v for k, v in schema.items() if k != "type"}
        if len(names) == 1:
            out = self.node({**rest, "type": names[0]}, depth + 1, refs)
        elif names:
            out = {"anyOf": [self.node({**rest, "type": t}, depth + 1, refs) for t in names]}
            for key in ("title", "description"):
                if isinstance(schema.get(key), str):
                    out[key] = schema[key]
        else:
            out = self.node(rest, depth + 1, refs)
        if nullable:
            out["nullable"] = True
        return out

    def enum(self, schema: dict[str, Any], out: dict[str, Any]) -> None:
        values = schema.get("enum")
        if "const" in schema and not isinstance(values, list):
            values = [schema["const"]]
        if not isinstance(values, list):
            return
        strings: list[str] = []
        for v in values:
            if v is None:
                out["nullable"] = True
                continue
            if isinstance(v, (dict, list)):
                continue
            s = _enum_value(v)
            if s not in strings:
                strings.append(s)
        if strings:
            out["enum"] = strings
            if out.get("type") in (None, "string"):
                out["type"] = "string"
                out["format"] = "enum"

    def bounds(self, schema: dict[str, Any], kind: str | None, out: dict[str, Any]) -> None:
        """``minimum``/``maximum``; exclusive bounds made inclusive (integers: ±1)."""
        step = 1 if kind == "integer" else 0
        for inclusive, exclusive, sign in (("minimum", "exclusiveMinimum", 1),
                                           ("maximum", "exclusiveMaximum", -1)):
            value = schema.get(inclusive) if _number(schema.get(inclusive)) else None
            ex: Any = schema.get(exclusive)
            if ex is True and value is not None:  # draft-4 boolean form
                value = value + sign * step
            elif _number(ex):
                bound = ex + sign * step
                if value is None or (bound > value if sign > 0 else bound < value):
                    value = bound
            if value is not None:
                out[inclusive] = value

    def items(self, schema: dict[str, Any], depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        items = schema.get("items")
        if isinstance(items, list):  # tuple form
            items = {"anyOf": items} if len(items) > 1 else (items[0] if items else None)
        if not isinstance(items, dict):
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list) and prefix:
                items = {"anyOf": prefix} if len(prefix) > 1 else prefix[0]
        if not isinstance(items, dict):
            return {}
        return self.node(items, depth + 1, refs)

    def properties(
        self, schema: dict[str, Any], depth: int, refs: tuple[str, ...], out: dict[str, Any]
    ) -> None:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return
        cleaned = {
            name: self.node(sub, depth + 1, refs)
            for name, sub in props.items()
            if isinstance(name, str) and name
        }
        if not cleaned:
            return
        out["properties"] = cleaned
        required = schema.get("required")
        if isinstance(required, list):
            names = []
            for r in required:
                if isinstance(r, str) and r in cleaned and r not in names:
                    names.append(r)
            if names:
                out["required"] = names
        ordering = schema.get("propertyOrdering")
        if isinstance(ordering, list):
            names = [p for p in ordering if isinstance(p, str) and p in cleaned]
            if names:
                out["propertyOrdering"] = list(dict.fromkeys(names))
