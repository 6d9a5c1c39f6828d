"""Tool schema cleaning by allow-list (gemini.md §3.1, R-G8; mapping.md §14 item 13)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import json_values
from txrelay.protocol.gemini.schema import (
    ALLOWED_KEYWORDS,
    FORMATS,
    TYPES,
    clean_parameters,
    clean_schema,
)

#: Keywords real schemas use, allowed or not, so generated schemas look like real ones.
_KEYWORDS = sorted(ALLOWED_KEYWORDS | {
    "$schema", "$id", "$comment", "$ref", "$defs", "definitions", "additionalProperties",
    "patternProperties", "propertyNames", "unevaluatedProperties", "const", "oneOf", "allOf",
    "not", "if", "then", "else", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "uniqueItems", "contains", "prefixItems", "dependentRequired", "examples",
    "contentEncoding", "contentMediaType", "readOnly", "writeOnly", "deprecated",
})
_TYPE_NAMES = st.sampled_from([*sorted(TYPES), "null", "STRING", "Integer", "float", "any"])
_REFS = st.sampled_from(["#", "#/$defs/A", "#/$defs/B", "#/definitions/C", "#/properties/p",
                         "http://x/y.json", "#/$defs/missing", "#/$defs/A/properties/self"])


def _schemas() -> st.SearchStrategy[Any]:
    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        value = st.one_of(
            inner,
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(max_size=4), inner, max_size=3),
            _TYPE_NAMES,
            st.lists(_TYPE_NAMES, max_size=3),
            _REFS,
            json_values,
        )
        return st.dictionaries(st.sampled_from(_KEYWORDS), value, max_size=6)

    return st.recursive(st.dictionaries(st.sampled_from(_KEYWORDS), json_values, max_size=3),
                        extend, max_leaves=25)


def _rooted() -> st.SearchStrategy[Any]:
    """Schemas with ``$defs`` that refer to each other and to themselves."""
    return st.builds(
        lambda root, a, b: {**root, "$defs": {"A": a, "B": b}, "definitions": {"C": b}},
        _schemas(), _schemas(), _schemas(),
    )


def assert_gemini_schema(node: Any, path: str = "$") -> None:
    """Everything Gemini's ``Schema`` checks (gemini.md §3.1), recursively."""
    assert isinstance(node, dict), path
    assert set(node) <= ALLOWED_KEYWORDS, (path, set(node) - ALLOWED_KEYWORDS)
    kind = node.get("type")
    assert kind is None or kind in TYPES, (path, kind)
    if "format" in node:
        assert node["format"] in FORMATS.get(kind or "", ()), (path, node["format"])
    if "enum" in node:
        assert node["enum"] and all(isinstance(v, str) for v in node["enum"]), path
    if "nullable" in node:
        assert node["nullable"] is True
    for key in ("title", "description", "pattern"):
        if key in node:
            assert isinstance(node[key], str)
    for key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties",
                "maxProperties"):
        if key in node:
            assert isinstance(node[key], int) and node[key] >= 0
    for key in ("minimum", "maximum"):
        if key in node:
            assert isinstance(node[key], (int, float)) and not isinstance(node[key], bool)
    if kind == "array":
        assert "items" in node, path
    if "items" in node:
        assert_gemini_schema(node["items"], path + ".items")
    props = node.get("properties")
    if props is not None:
        assert isinstance(props, dict) and props, path
        for name, sub in props.items():
            assert_gemini_schema(sub, f"{path}.properties.{name}")
    if "required" in node:
        assert node["required"] and set(node["required"]) <= set(props or ()), path
    if "propertyOrdering" in node:
        assert set(node["propertyOrdering"]) <= set(props or ()), path
    if "anyOf" in node:
        assert isinstance(node["anyOf"], list) and node["anyOf"], path
        for i, sub in enumerate(node["anyOf"]):
            assert_gemini_schema(sub, f"{path}.anyOf[{i}]")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas() | _rooted() | json_values)
# Found by hypothesis: allOf merging trusted the outer schema's properties to be an object.
@example(schema={'anyOf': {}, 'const': {}, 'contains': {}, 'allOf': [{}], 'properties': [{}]})
@example(schema={'allOf': [{}], 'required': 3})
def test_any_schema_in_only_allow_listed_keywords_out(schema: Any) -> None:
    assert_gemini_schema(clean_schema(schema))
    params = clean_parameters(schema)
    if params is not None:
        assert_gemini_schema(params)
        assert params["type"] == "object" and params["properties"]


def test_mcp_schema_with_the_usual_breakage() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "urn:x", "$comment": "generated",
        "type": "object",
        "additionalProperties": False,
        "propertyNames": {"pattern": "^[a-z]+$"},
        "properties": {
            "path": {"type": "string", "format": "uri", "description": "file"},
            "when": {"type": "string", "format": "date-time"},
            "count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10,
                      "multipleOf": 2},
            "ratio": {"type": "number", "exclusiveMinimum": 0.5},
            "maybe": {"type": ["string", "null"]},
            "either": {"type": ["string", "number"]},
            "mode": {"const": "fast"},
            "level": {"enum": [1, 2, None]},
            "tags": {"type": "array", "uniqueItems": True},
            "opt": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "choice": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "merged": {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                                 {"properties": {"b": {"type": "boolean"}}}]},
            "deprecated_field": {"type": "string", "deprecated": True, "readOnly": True,
                                 "examples": ["e1", "e2"]},
        },
        "required": ["path", "ghost"],
    }
    out = clean_schema(schema)
    assert_gemini_schema(out)
    p = out["properties"]
    assert out["required"] == ["path"]
    assert p["path"] == {"type": "string", "description": "file"}
    assert p["when"] == {"type": "string", "format": "date-time"}
    assert p["count"] == {"type": "integer", "minimum": 1, "maximum": 9}
    assert p["ratio"] == {"type": "number", "minimum": 0.5}
    assert p["maybe"] == {"type": "string", "nullable": True}
    assert p["either"] == {"anyOf": [{"type": "string"}, {"type": "number"}]}
    assert p["mode"] == {"type": "string", "enum": ["fast"], "format": "enum"}
    assert p["level"] == {"type": "string", "nullable": True, "enum": ["1", "2"],
                          "format": "enum"}
    assert p["tags"] == {"type": "array", "items": {}}
    assert p["opt"] == {"type": "string", "nullable": True}
    assert p["choice"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert p["merged"] == {"type": "object", "properties": {"a": {"type": "string"},
                                                             "b": {"type": "boolean"}},
                           "required": ["a"]}
    assert p["deprecated_field"] == {"type": "string", "example": "e1"}


def test_refs_inlined_and_cycles_cut() -> None:
    schema = {
        "type": "object",
        "properties": {"tree": {"$ref": "#/$defs/Node"}, "alias": {"$ref": "#/definitions/S",
                                                                   "description": "d"}},
        "$defs": {"Node": {"type": "object", "properties": {
            "value": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        "definitions": {"S": {"type": "string", "maxLength": 5}},
    }
    out = clean_schema(schema)
    assert_gemini_schema(out)
    tree = out["properties"]["tree"]
    assert tree["properties"]["value"] == {"type": "string"}
    assert tree["properties"]["children"] == {"type": "array", "items": {"type": "object"}}
    assert out["properties"]["alias"] == {"type": "string", "description": "d", "maxLength": 5}


def test_self_reference_to_the_root_is_cut() -> None:
    out = clean_schema({"type": "object", "properties": {"again": {"$ref": "#"}}})
    assert out == {"type": "object", "properties": {"again": {"type": "object", "properties": {
        "again": {"type": "object"}}}}}


def test_exponential_ref_fan_out_is_bounded() -> None:
    defs = {f"D{i}": {"type": "object", "properties": {
        "a": {"$ref": f"#/$defs/D{i + 1}"}, "b": {"$ref": f"#/$defs/D{i + 1}"}}}
        for i in range(40)}
    defs["D40"] = {"type": "string"}
    out = clean_schema({"$ref": "#/$defs/D0", "$defs": defs})
    assert_gemini_schema(out)
    assert len(repr(out)) < 2_000_000


@pytest.mark.parametrize("schema", [
    {"type": "object"}, {"type": "object", "properties": {}}, {}, None, "x",
    {"type": "object", "additionalProperties": {"type": "string"}},
])
def test_parameters_omitted_when_no_properties(schema: Any) -> None:
    """Gemini rejects an OBJECT whose ``properties`` is empty."""
    assert clean_parameters(schema) is None


def test_draft4_boolean_exclusive_bounds() -> None:
    out = clean_schema({"type": "integer", "minimum": 0, "exclusiveMinimum": True,
                        "maximum": 5, "exclusiveMaximum": True})
    assert out == {"type": "integer", "minimum": 1, "maximum": 4}


def test_upper_case_types_accepted() -> None:
    assert clean_schema({"type": "STRING"}) == {"type": "string"}
