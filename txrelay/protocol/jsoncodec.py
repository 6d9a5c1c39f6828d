"""
JSON encoding and decoding for the wire, fast and forgiving where the standard library is.

orjson is several times faster than :mod:`json` on the relay's hot paths (80 KB requests,
thousands of small events). It rejects lone surrogates, which real clients occasionally send
(an emoji cut in half); those fall back to :mod:`json`, which accepts them.

Both directions fail only with this module's own exceptions, whatever the input: hostile
text (nesting thousands deep, integers of thousands of digits, ``NaN``) is a
:class:`JSONDecodeError`, and a value that cannot be written (nested too deeply, an
integer too long to print) is a :class:`JSONEncodeError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NoReturn

import orjson


class JSONDecodeError(ValueError):
    """The text is not JSON; the message says where it went wrong."""


class JSONNestingError(JSONDecodeError):
    """The text is JSON nested deeper than the decoder goes."""


class JSONEncodeError(ValueError):
    """The value cannot be written as JSON; the message says why, in plain words."""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


#: orjson's own parser, for hot paths that try it first and call :func:`loads` only when it
#: raises (:class:`orjson.JSONDecodeError`, a :class:`ValueError`): one Python call less per
#: streamed chunk, and the same result whenever it succeeds.
fast_loads: Callable[[bytes | str], Any] = orjson.loads
#: orjson's own encoder, likewise: call :func:`dumps` when it raises :class:`TypeError`.
fast_dumps: Callable[[Any], bytes] = orjson.dumps


def loads(data: bytes | str) -> Any:
    """
    Parse JSON text (bytes or str).

    :raises JSONDecodeError: for anything that is not strict JSON, including ``NaN`` and
        ``Infinity``, numbers out of range and nesting deeper than orjson's 1,024 levels.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        first = e
    # The standard library accepts what orjson refuses only in strings (lone surrogates);
    # anything it parses beyond that (NaN, 1e999) is refused here too.
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise JSONNestingError("JSON is nested too deeply") from None
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError, int digit limits, ours
        raise JSONDecodeError(str(first)) from None


def dumps(obj: Any) -> bytes:
    """
    Serialise ``obj`` to compact UTF-8 JSON on one line.

    :raises JSONEncodeError: when ``obj`` cannot be written (nested too deeply, a number
        with too many digits, a value that is not JSON data).
    """
    try:
        return orjson.dumps(obj)
    except TypeError:
        pass
    # Lone surrogates, integers beyond 64 bits, or deeper than orjson's 254 levels.
    try:
        return json.dumps(
            obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")
    except RecursionError:
        raise JSONEncodeError("value is nested too deeply to write as JSON") from None
    except (TypeError, ValueError) as e:
        raise JSONEncodeError(f"value cannot be written as JSON: {_plain(e)}") from None


def _plain(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else ""
    if "Out of range float" in text:
        return "numbers must be finite"
    if "integer string conversion" in text:
        return "an integer has too many digits"
    if "is not JSON serializable" in text:
        return "it holds a value that is not JSON data"
    return "unsupported value"


def dumps_str(obj: Any) -> str:
    """Like :func:`dumps` but returns ``str``."""
    return dumps(obj).decode("utf-8")
