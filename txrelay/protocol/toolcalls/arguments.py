"""
The tools a request offered, and whether a call written as text names one with valid input.

Arguments are parsed (and repaired with ``json_repair`` when they are a string that is not
quite JSON, see :func:`txrelay.protocol.jsonprefix.repair_json_object`) and validated against
the tool's ``input_schema`` with ``jsonschema``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from txrelay.protocol.jsonprefix import repair_json_object

#: Tool types that are the client's own function tools (server tools are not callable).
_CLIENT_TOOL_TYPES = (None, "custom")


@attrs.frozen
class ToolCall:
    """A call the model wrote as text, checked: an offered tool's name and its input."""

    name: str
    input: dict[str, Any]


@attrs.frozen
class Rejected:
    """Why text that looked like a call stays text (for the log: it quotes no argument)."""

    reason: str


def _validator(schema: object) -> Any:
    if not isinstance(schema, Mapping):
        return None
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        return cls(schema)
    except (jsonschema.exceptions.SchemaError, TypeError, ValueError):
        return None  # a schema jsonschema cannot use: the input is not checked


@attrs.define(eq=False)
class ToolSet:
    """
    The client tools a request offered, with a validator per ``input_schema``.

    :ivar accept_invalid: a call whose input stays invalid after repair is converted anyway
        (``True``) or left as text (``False``, the default).
    """

    schemas: dict[str, Any]
    accept_invalid: bool = False
    _validators: dict[str, Any] = attrs.Factory(dict)

    @classmethod
    def from_tools(cls, tools: Iterable[Mapping[str, Any]] | None, *,
                   accept_invalid: bool = False) -> ToolSet:
        """The client tools among a request's ``tools``."""
        schemas = {t["name"]: t.get("input_schema") for t in tools or ()
                   if isinstance(t.get("name"), str) and t.get("type") in _CLIENT_TOOL_TYPES}
        return cls(schemas, accept_invalid)

    def __bool__(self) -> bool:
        return bool(self.schemas)

    def offers(self, name: object) -> bool:
        """Whether ``name`` is an offered client tool."""
        return isinstance(name, str) and name in self.schemas

    def check(self, name: object, arguments: object) -> ToolCall | Rejected:
        """``arguments`` (an object, a JSON string, or absent) for a call of ``name``."""
        if not isinstance(name, str) or name not in self.schemas:
            return Rejected(f"{str(name)[:64]!r} is not an offered tool")
        if arguments is None:
            value: Any = {}
        elif isinstance(arguments, str):
            value = repair_json_object(arguments)
            if "_invalid_arguments" in value and len(value) == 1:
                return Rejected(f"the arguments of {name} are not JSON")
        else:
            value = arguments
        if not isinstance(value, dict):
            return Rejected(f"the arguments of {name} are not an object")
        if name not in self._validators:
            self._validators[name] = _validator(self.schemas[name])
        validator = self._validators[name]
        if validator is not None and not self.accept_invalid:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
            if error is not None:
                # Where and which keyword, not the message: it quotes the argument values.
                return Rejected(f"the arguments of {name} do not match its input_schema "
                                f"({error.validator} at {error.json_path})")
        return ToolCall(name, value)
