"""
Strict cattrs structuring with error messages that name the offending path.

cattrs is permissive out of the box (``"10"`` becomes ``10``, a string becomes a list of
characters). The converter built here checks JSON/TOML types exactly, so a wrong type is an
error that names the field, and :func:`error_lines` renders every problem with its path.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from types import UnionType
from typing import Any, Literal, get_args, get_origin

import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError


def json_type_name(value: object) -> str:
    """How a JSON/TOML value's type reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _expect(kind: str, value: object) -> TypeError:
    return TypeError(f"expected {kind}, got {json_type_name(value)}")


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _expect("a string", value)
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expect("an integer", value)
    return value


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expect("a number", value)
    return float(value)


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise _expect("a boolean", value)
    return value


def _structure_any(value: object, _: type) -> Any:
    return value


def _is_literal(t: Any) -> bool:
    return get_origin(t) is Literal


def _structure_literal(value: object, t: Any) -> Any:
    allowed = get_args(t)
    if value not in allowed or type(value) is not type(allowed[0]):
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"expected one of {choices}, got {value!r}")
    return value


def _is_dict_of_any(t: Any) -> bool:
    return get_origin(t) is dict and get_args(t)[1:] == (Any,)


def _structure_dict(value: object, t: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _expect("an object", value)
    return value


def _is_list_type(t: Any) -> bool:
    origin = get_origin(t)
    args = get_args(t)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


def _is_str_or_blocks(t: Any) -> bool:
    """``str | list[dict[str, Any]]``: a content value (string shorthand or block list)."""
    if not isinstance(t, UnionType) and get_origin(t) is not typing.Union:
        return False
    args = set(get_args(t)) - {type(None)}
    return args == {str, list[dict[str, Any]]}


def make_converter(*, forbid_extra_keys: bool) -> cattrs.Converter:
    """A converter with exact JSON/TOML type checks and path-carrying errors."""
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook_func(lambda t: t is Any, _structure_any)
    conv.register_structure_hook_func(_is_literal, _structure_literal)
    conv.register_structure_hook_func(_is_dict_of_any, _structure_dict)

    def list_factory(t: Any) -> Structurer:
        base = (
            list_structure_factory(t, conv)
            if get_origin(t) is list
            else homogenous_tuple_structure_factory(t, conv)
        )

        def structure_list(value: object, t: Any) -> Any:
            # A bare string would otherwise become a list of its characters.
            if not isinstance(value, list):
                raise _expect("an array", value)
            return base(value, t)

        return structure_list

    conv.register_structure_hook_factory(_is_list_type, list_factory)

    def structure_content(value: object, t: Any) -> Any:
        if value is None and type(None) in get_args(t):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise TypeError(f"item {i}: expected an object, got {json_type_name(item)}")
            return value
        raise _expect("a string or an array", value)

    conv.register_structure_hook_func(_is_str_or_blocks, structure_content)
    return conv


def _format(exc: BaseException, _: type | None) -> str:
    if isinstance(exc, KeyError):
        return "field required"
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown key(s): " + ", ".join(sorted(exc.extra_fields))
    if isinstance(exc, AttributeError) and "has no attribute" in str(exc):
        return "expected an object"
    if isinstance(exc, TypeError | ValueError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def error_lines(exc: BaseException) -> list[tuple[str, str]]:
    """
    Every problem inside a cattrs validation error as ``(path, message)``.

    Paths come out as ``providers[1].base_url`` (attribute names, list indexes in brackets);
    extra-key errors point at the table that holds the unknown keys.
    """
    out: list[tuple[str, str]] = []
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for line in cattrs.transform_error(exc, path="$", format_exception=_format):
            message, _, path = line.rpartition(" @ ")
            out.append((_clean_path(path), message))
    else:
        out.append(("", _format(exc, None)))
    return out


def _clean_path(path: str) -> str:
    return path.removeprefix("$").removeprefix(".")


def dotted(path: str) -> str:
    """``messages[0].content`` → ``messages.0.content``, the Anthropic API's path style."""
    return path.replace("[", ".").replace("]", "")


Structurer = Callable[[Any, Any], Any]
