"""
Incremental JSON-prefix checking and tool-argument repair (mapping.md §4.5, R-O28).

Anthropic clients re-parse the concatenated ``partial_json`` of a tool block as *partial* JSON
after every delta and raise when it stops being a valid prefix (anthropic-messages.md §11.3).
:class:`JSONPrefixChecker` is fed the upstream's argument fragments one at a time and returns,
for each, the part that may be forwarded: a per-character state machine over the new fragment
only (string bodies are skipped with one regex search), never a re-parse of the buffer.

What it forwards is always a valid JSON prefix whose completion is unambiguous:

- leading whitespace is dropped (a whitespace-only buffer is not a valid prefix for the SDK);
- a raw control character inside a string (weaker models emit literal newlines) is forwarded
  escaped, so the text stays valid JSON;
- a token whose completion would otherwise be guesswork is held back until it ends: an escape
  sequence, a number, a literal, and a comma together with the whitespace after it;
- nothing after the first complete top-level value is forwarded (trailing junk, R-O28).

:meth:`JSONPrefixChecker.closing_suffix` then closes a truncated prefix (``finish_reason:
"length"``), and :func:`repair_json_object` repairs text that was not JSON at all.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from txrelay.protocol.jsoncodec import JSONDecodeError, dumps_str, loads

log = logging.getLogger(__name__)

# Parser states.
_VALUE = 0  # a value is expected
_VALUE_OR_CLOSE = 1  # right after "[": a value or "]"
_KEY_OR_CLOSE = 2  # right after "{": a key or "}"
_KEY = 3  # after "," in an object
_COLON = 4  # after a key
_AFTER = 5  # after a value inside a container: "," or the closing bracket
_STRING = 6
_ESCAPE = 7  # after a backslash in a string
_UNICODE = 8  # inside \uXXXX
_NUMBER = 9
_LITERAL = 10
_DONE = 11  # the top-level value is complete
_INVALID = 12

# Number sub-states; the terminable ones may end the number.
_N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_EXP, _N_ESIGN, _N_EDIG = range(8)
_TERMINABLE = (False, True, True, False, True, False, False, True)

_STRING_STOP = re.compile(r'["\\\x00-\x1f]')
_WHITESPACE = frozenset(" \t\n\r")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_LITERAL_REST = {"t": "rue", "f": "alse", "n": "ull"}
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)\r?\n?```\s*$", re.DOTALL)


def _escape_control(c: str) -> str:
    return _CONTROL_ESCAPES.get(c) or f"\\u{ord(c):04x}"


class JSONPrefixChecker:
    """
    Validates JSON text fed in fragments; see the module docstring for what it forwards.

    :param require_object: the top-level value must be an object (tool inputs are); anything
        else makes the text invalid from its first character.
    """

    __slots__ = (
        "_hex_left",
        "_key",
        "_lit_rest",
        "_num",
        "_pending",
        "_require_object",
        "_stack",
        "_state",
    )

    def __init__(self, *, require_object: bool = True) -> None:
        self._require_object = require_object
        self._state = _VALUE
        self._stack: list[str] = []
        self._pending = ""  # held-back text (see module docstring), not yet forwarded
        self._key = False  # the open string is an object key
        self._num = _N_MINUS
        self._lit_rest = ""
        self._hex_left = 0

    @property
    def valid(self) -> bool:
        """Whether everything fed so far is a valid JSON prefix (trailing junk excluded)."""
        return self._state != _INVALID

    @property
    def complete(self) -> bool:
        """Whether a complete top-level value has been seen."""
        state = self._state
        if state == _DONE:
            return True
        return state == _NUMBER and not self._stack and _TERMINABLE[self._num]

    @property
    def depth(self) -> int:
        """How many arrays and objects are open."""
        return len(self._stack)

    @property
    def started(self) -> bool:
        """Whether the top-level value has begun (a non-whitespace character was accepted)."""
        return self._state != _VALUE or bool(self._stack) or bool(self._pending)

    def feed(self, text: str) -> str:
        """Check one more fragment; return the text to forward (possibly ``""``)."""
        state = self._state
        if state >= _DONE or not text:
            return ""
        pending = self._pending
        buf = pending + text if pending else text
        n = len(buf)
        i = len(pending)
        hold = 0 if pending else -1  # start of the held-back token in buf
        start = 0  # start of the run still to forward
        pieces: list[str] | None = None
        stack = self._stack
        cut = -1
        while i < n:
            if state == _STRING:
                m = _STRING_STOP.search(buf, i)
                if m is None:
                    i = n
                    break
                i = m.start()
                c = buf[i]
                if c == '"':
                    i += 1
                    if self._key:
                        state = _COLON
                    elif stack:
                        state = _AFTER
                    else:
                        state = _DONE
                        cut = i
                        break
                elif c == "\\":
                    hold = i
                    state = _ESCAPE
                    i += 1
                else:
                    if pieces is None:
                        pieces = []
                    pieces.append(buf[start:i])
                    pieces.append(_escape_control(c))
                    i += 1
                    start = i
                continue
            c = buf[i]
            if state == _AFTER:
                if c in _WHITESPACE:
                    i += 1
                elif c == ",":
                    hold = i
                    state = _KEY if stack[-1] == "{" else _VALUE
                    i += 1
                elif (c == "}" and stack[-1] == "{") or (c == "]" and stack[-1] == "["):
                    stack.pop()
                    i += 1
                    if not stack:
                        state = _DONE
                        cut = i
                        break
                else:
                    state = _INVALID
                    break
            elif state == _ESCAPE:
                if c in _SIMPLE_ESCAPES:
                    state = _STRING
                    hold = -1
                elif c == "u":
                    state = _UNICODE
                    self._hex_left = 4
                else:
                    state = _INVALID
                    break
                i += 1
            elif state == _UNICODE:
                if c not in _HEX:
                    state = _INVALID
                    break
                i += 1
                self._hex_left -= 1
                if not self._hex_left:
                    state = _STRING
                    hold = -1
            elif state == _NUMBER:
                num = self._num
                nxt = -1
                if c in _DIGITS:
                    if num in (_N_MINUS, _N_INT):
                        nxt = _N_INT if (num == _N_INT or c != "0") else _N_ZERO
                    elif num in (_N_DOT, _N_FRAC):
                        nxt = _N_FRAC
                    elif num in (_N_EXP, _N_ESIGN, _N_EDIG):
                        nxt = _N_EDIG
                elif c == ".":
                    if num in (_N_ZERO, _N_INT):
                        nxt = _N_DOT
                elif c in "eE":
                    if num in (_N_ZERO, _N_INT, _N_FRAC):
                        nxt = _N_EXP
                elif c in "+-" and num == _N_EXP:
                    nxt = _N_ESIGN
                if nxt >= 0:
                    self._num = nxt
                    i += 1
                elif _TERMINABLE[num]:
                    hold = -1
                    if stack:
                        state = _AFTER  # re-examine c in _AFTER
                    else:
                        state = _DONE
                        cut = i
                        break
                else:
                    state = _INVALID
                    break
            elif state == _LITERAL:
                rest = self._lit_rest
                if c != rest[0]:
                    state = _INVALID
                    break
                i += 1
                rest = rest[1:]
                self._lit_rest = rest
                if not rest:
                    hold = -1
                    if stack:
                        state = _AFTER
                    else:
                        state = _DONE
                        cut = i
                        break
            elif state == _COLON:
                if c == ":":
                    state = _VALUE
                elif c not in _WHITESPACE:
                    state = _INVALID
                    break
                i += 1
            elif state in (_KEY, _KEY_OR_CLOSE):
                if c == '"':
                    state = _STRING
                    self._key = True
                    hold = -1
                elif c == "}" and state == _KEY_OR_CLOSE:
                    stack.pop()
                    if stack:
                        state = _AFTER
                    else:
                        state = _DONE
                        cut = i + 1
                        break
                elif c not in _WHITESPACE:
                    state = _INVALID
                    break
                i += 1
            else:  # _VALUE / _VALUE_OR_CLOSE
                if c in _WHITESPACE:
                    i += 1
                    if not stack:
                        start = i  # never forward leading whitespace
                    continue
                if not stack and self._require_object and c != "{":
                    state = _INVALID
                    break
                if c == "{":
                    stack.append("{")
                    state = _KEY_OR_CLOSE
                    hold = -1
                elif c == "[":
                    stack.append("[")
                    state = _VALUE_OR_CLOSE
                    hold = -1
                elif c == '"':
                    state = _STRING
                    self._key = False
                    hold = -1
                elif c == "-" or c in _DIGITS:
                    state = _NUMBER
                    self._num = _N_MINUS if c == "-" else (_N_ZERO if c == "0" else _N_INT)
                    if hold < 0:
                        hold = i
                elif c in _LITERAL_REST:
                    state = _LITERAL
                    self._lit_rest = _LITERAL_REST[c]
                    if hold < 0:
                        hold = i
                elif c == "]" and state == _VALUE_OR_CLOSE:
                    stack.pop()
                    if stack:
                        state = _AFTER
                    else:
                        state = _DONE
                        cut = i + 1
                        break
                else:
                    state = _INVALID
                    break
                i += 1
        self._state = state
        if state == _INVALID:
            cut = hold if hold >= 0 else i
            self._pending = ""
        elif state == _DONE:
            self._pending = ""
        elif hold >= 0:
            cut = hold
            self._pending = buf[hold:]
        else:
            cut = n
            self._pending = ""
        cut = max(cut, start)
        if pieces is None:
            return buf[start:cut] if (start or cut != n) else buf
        pieces.append(buf[start:cut])
        return "".join(pieces)

    def closing_suffix(self) -> str:
        """
        Text that completes what :meth:`feed` forwarded into a valid JSON document.

        Held-back numbers and literals are finished (``1.`` → ``1.0``, ``tr`` → ``true``), a
        dangling escape or comma is dropped, a key without value gets ``null``, open strings
        and containers are closed. ``""`` when nothing was started or the value is complete.
        Raises :class:`ValueError` when the text is invalid.
        """
        state = self._state
        if state == _INVALID:
            raise ValueError("not a valid JSON prefix")
        if state == _DONE:
            return ""
        stack = self._stack
        held = self._pending
        parts: list[str] = []
        if state == _NUMBER:
            parts.append(held if _TERMINABLE[self._num] else held + "0")
        elif state == _LITERAL:
            parts.append(held + self._lit_rest)
        elif state in (_STRING, _ESCAPE, _UNICODE):
            parts.append('":null' if self._key else '"')
        elif state == _COLON:
            parts.append(":null")
        elif state == _VALUE and not held:
            if not stack:
                return ""
            parts.append("null")
        for opener in reversed(stack):
            parts.append("}" if opener == "{" else "]")
        return "".join(parts)


def _strip_insignificant_whitespace(text: str) -> str:
    """``text`` without the whitespace outside strings (for comparing serialisations)."""
    out: list[str] = []
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
            out.append(c)
        elif c == '"':
            in_string = True
            out.append(c)
        elif c not in _WHITESPACE:
            out.append(c)
    return "".join(out)


def json_completion(prefix: str, value: dict[str, Any]) -> str | None:
    """
    A suffix such that ``prefix + suffix`` parses to exactly ``value``, or ``None``.

    Used when live-forwarded tool arguments turned out to need repair (R-S10): the client
    already holds ``prefix``, so only a continuation can still give it the repaired input.
    """
    if not prefix:
        return dumps_str(value)
    candidates = [dumps_str(value), json.dumps(value, separators=(",", ":"))]
    compact = _strip_insignificant_whitespace(prefix)
    for canonical in candidates:
        for head in (prefix, compact):
            if canonical.startswith(head):
                suffix = canonical[len(head) :]
                try:
                    if loads(prefix + suffix) == value:
                        return suffix
                except JSONDecodeError:
                    pass
    return None


def _as_object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {"value": value}


def repair_json_object(text: str) -> dict[str, Any]:
    """
    Tool arguments as a JSON object, repaired as R-O28 describes.

    Empty → ``{}``; markdown fences stripped; trailing junk after the first complete value cut;
    Python literals, single quotes, unclosed strings/brackets repaired with ``json_repair``;
    non-object values wrapped as ``{"value": …}``; unrepairable → ``{"_invalid_arguments": raw}``.
    """
    stripped = text.strip()
    if not stripped:
        return {}
    try:
        return _as_object(loads(stripped))
    except JSONDecodeError:
        pass
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
        if not stripped:
            return {}
    checker = JSONPrefixChecker(require_object=False)
    head = checker.feed(stripped)
    if checker.complete:
        try:
            return _as_object(loads(head))
        except JSONDecodeError:
            pass
    import json_repair  # only for arguments that are not JSON: keep it out of a fresh relay

    try:
        value = json_repair.loads(stripped)
    except Exception:  # json_repair may raise on pathological input; never let it escape
        log.debug("json_repair failed on tool arguments", exc_info=True)
        value = ""
    if (
        isinstance(value, list)
        and stripped.startswith("{")
        and value
        and isinstance(value[0], dict)
    ):
        return value[0]  # several objects run together: keep the first (trailing junk)
    if value == "" or value is None or (value == [] and not stripped.startswith("[")):
        return {"_invalid_arguments": text}
    return _as_object(value)
