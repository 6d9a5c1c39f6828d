"""
Anthropic tool definitions → OpenAI function tools (R-O17, R-O19, R-O20).

Custom tools keep their schema; Anthropic-defined client tools (bash, text editor, memory,
computer) get a synthesised schema when the dialect allows; server tools are dropped because
their results would never reach the client.
"""

from __future__ import annotations

import logging
from typing import Any

from txrelay.protocol.openai.dialect import OpenAIDialect
from txrelay.protocol.openai.toolnames import ToolNameMap

log = logging.getLogger(__name__)

_CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "memory_", "computer_")

# Anthropic-defined client tools (R-O19)
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
