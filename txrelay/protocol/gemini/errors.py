"""
Gemini error bodies as Anthropic errors (mapping.md §11.3, R-E1/R-E3).

Gemini answers ``{"error": {"code", "message", "status", "details"}}`` (sometimes wrapped in a
one-element array, gemini.md §8). Every function here returns a :class:`RelayError` and never
raises, whatever the body holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import JSONDecodeError, loads

_MAX_TEXT = 2000
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
#: Google API keys, should a gateway echo one.
_KEY = re.compile(r"AIza[0-9A-Za-z_-]{20,}")
_OVERFLOW = (
    "input token count",
    "exceeds the maximum number of tokens",
    "exceeds the context window",
    "too many tokens",
)
_COUNTS = (
    # AI Studio: "The input token count (N) exceeds the maximum number of tokens allowed (M)."
    re.compile(
        r"input token count(?: is)?\s*\(?(\d[\d,]*)\)?.*?maximum number of tokens allowed"
        r"(?: is)?\s*\(?(\d[\d,]*)\)?",
        re.I | re.S,
    ),
    # Vertex: "... the input token count is N but model only supports up to M."
    re.compile(r"input token count is (\d[\d,]*) but model only supports up to (\d[\d,]*)",
               re.I),
)
#: Gemini refusing a replayed thought signature (another model or key issued it, R-G10.3).
_SIGNATURE_REJECTED = ("invalid thought signature", "corrupted thought signature",
                       "thought signature is not valid", "thought_signature is invalid")
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
#: Anthropic error type for each Google RPC status.
_TYPE_FOR_STATUS = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "FAILED_PRECONDITION": "permission_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "ALREADY_EXISTS": "conflict_error",
    "ABORTED": "conflict_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "CANCELLED": "api_error",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
    "DATA_LOSS": "api_error",
    "UNIMPLEMENTED": "invalid_request_error",
    "UNAVAILABLE": "overloaded_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}
_TYPE_FOR_HTTP = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "api_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


@attrs.frozen
class GeminiProblem:
    """What could be read from a Gemini error body."""

    message: str
    code: int | None = None
    status: str | None = None
    reasons: tuple[str, ...] = ()
    retry_delay: float | None = None


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _plain(text: str) -> str:
    if "<" in text and ">" in text:
        text = _TAG.sub(" ", text)
    return _truncate(_SPACE.sub(" ", text).strip())


def parse_gemini_problem(body: Any) -> GeminiProblem:
    """Read a Gemini error from raw bytes, text or a decoded value; never raises."""
    obj: Any = body
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            obj = loads(body.strip()) if body.strip() else None
        except JSONDecodeError:
            return GeminiProblem(_plain(body))
    if isinstance(obj, list) and obj:
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, str):
        return GeminiProblem(_plain(err))
    if not isinstance(err, dict):
        return GeminiProblem("" if obj is None else _plain(str(obj)))
    message = err.get("message")
    code = err.get("code")
    status = err.get("status")
    reasons: list[str] = []
    delay: float | None = None
    details = err.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        reason = detail.get("reason")
        if isinstance(reason, str):
            reasons.append(reason)
        retry = detail.get("retryDelay")
        if isinstance(retry, str) and (m := _DELAY.match(retry)):
            delay = float(m.group(1))
        elif isinstance(retry, dict):
            seconds = retry.get("seconds")
            if isinstance(seconds, int) or (isinstance(seconds, str) and seconds.isdigit()):
                delay = float(seconds)
    if delay is not None and not (math.isfinite(delay) and 0 <= delay < 86400 * 7):
        delay = None
    return GeminiProblem(
        _plain(message) if isinstance(message, str) else "",
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        status if isinstance(status, str) else None,
        tuple(reasons),
        delay,
    )


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def is_context_overflow(problem: GeminiProblem) -> bool:
    """Whether Gemini rejected the prompt as longer than the model's context."""
    lowered = problem.message.lower()
    return any(hint in lowered for hint in _OVERFLOW)


def overflow_message(problem: GeminiProblem) -> str:
    """Claude Code's compaction trigger: ``prompt is too long: N tokens > M maximum``."""
    for pattern in _COUNTS:
        m = pattern.search(problem.message)
        if m:
            prompt, limit = _number(m.group(1)), _number(m.group(2))
            return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return f"prompt is too long: {problem.message or 'the Gemini context window is full'}"


def is_signature_rejection(status: int, body: bytes) -> bool:
    """
    Whether Gemini rejected a replayed thought signature (``Invalid``/``Corrupted thought
    signature``, 400). R-G10.3: retry once with ``replay_signatures=False``.
    """
    if status != 400:
        return False
    lowered = parse_gemini_problem(body).message.lower()
    return any(hint in lowered for hint in _SIGNATURE_REJECTED)


def _retry_after(problem: GeminiProblem, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if problem.retry_delay is not None:
        return (("retry-after", str(max(1, math.ceil(problem.retry_delay)))),)
    value = headers.get("retry-after")
    if value and value.strip():
        return (("retry-after", value.strip()),)
    return ()


def _error(
    kind: str,
    problem: GeminiProblem,
    headers: Mapping[str, str],
    *,
    upstream_name: str,
    upstream_model: str,
    http_status: int | None,
) -> RelayError:
    message = _KEY.sub("[redacted]", problem.message)
    what = problem.status or (f"HTTP {http_status}" if http_status else "error")
    text = f"{upstream_name}: {message or what}"
    if kind == "authentication_error":
        return RelayError(
            kind,
            f"{upstream_name} rejected the relay's upstream credential ({what}); check the API "
            "key or service account configured for this upstream",
        )
    if kind == "not_found_error":
        return RelayError(kind, f"{upstream_name}: not found (upstream model {upstream_model!r})"
                          + (f": {message}" if message else ""))
    if kind in ("rate_limit_error", "overloaded_error"):
        return RelayError(kind, text, headers=_retry_after(problem, headers))
    return RelayError(kind, text)


def _classify(problem: GeminiProblem, status: int | None) -> str:
    if "API_KEY_INVALID" in problem.reasons or "api key not valid" in problem.message.lower():
        return "authentication_error"  # Gemini reports a bad key as 400 INVALID_ARGUMENT
    if is_context_overflow(problem) and status != 429 and problem.status != "RESOURCE_EXHAUSTED":
        return "context_overflow"
    if "overloaded" in problem.message.lower():
        return "overloaded_error"
    if problem.status in _TYPE_FOR_STATUS:
        return _TYPE_FOR_STATUS[problem.status]
    if status is not None and status in _TYPE_FOR_HTTP:
        return _TYPE_FOR_HTTP[status]
    if status is not None and status >= 500:
        return "api_error"
    if status is not None and status >= 400:
        return "invalid_request_error"
    return "api_error"


def gemini_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    upstream_name: str,
    upstream_model: str,
) -> RelayError:
    """
    The Anthropic error for a non-2xx Gemini answer (R-E3).

    :param headers: upstream response headers, names in lower case.
    """
    problem = parse_gemini_problem(body)
    kind = _classify(problem, status)
    if kind == "context_overflow":
        return RelayError("invalid_request_error", overflow_message(problem))
    return _error(kind, problem, headers or {}, upstream_name=upstream_name,
                  upstream_model=upstream_model, http_status=status)


def gemini_stream_error(
    payload: Any, *, upstream_name: str = "gemini", upstream_model: str = ""
) -> RelayError:
    """The Anthropic error for ``{"error": …}`` inside a committed stream (R-GS8, R-E4)."""
    problem = parse_gemini_problem(payload)
    kind = _classify(problem, problem.code)
    if kind == "context_overflow":
        return RelayError("invalid_request_error", overflow_message(problem))
    return _error(kind, problem, {}, upstream_name=upstream_name,
                  upstream_model=upstream_model, http_status=problem.code)
