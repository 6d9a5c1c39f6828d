"""
Upstream errors from OpenAI-compatible servers, as Anthropic errors (mapping.md §11, R-E1/R-E2).

Every function here returns a :class:`RelayError` and never raises, whatever the upstream sent:
JSON of any of the shapes in openai-chat.md §8, plain text, HTML, or bytes that are not text.
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

_OVERFLOW_HINTS = (
    "context_length_exceeded",
    "exceed_context_size",
    "maximum context length",
    "context length",
    "context window",
    "available context size",
    "exceeds the available context",
    "exceeds the context",
    "context size has been exceeded",
    "prompt is longer than",
    "too many input tokens",
    "exceeds the maximum number of tokens",
    "input token count",
    "prompt is too long",
    "too many tokens",
    "reduce the length of the messages",
    "input length and `max_tokens` exceed",
)
#: Transient capacity problems (SDKs retry 529). Kept narrow: a permanent 4xx mapped here
#: would be retried forever.
_OVERLOAD_HINTS = (
    "no provider available",
    "overloaded",
    "insufficient_system_resource",
    "server is busy",
)
_MAX_CONTEXT = (
    re.compile(r"maximum context length is (\d[\d,]*)", re.I),
    re.compile(r"maximum number of tokens allowed \((\d[\d,]*)\)", re.I),
    re.compile(r"context (?:size|length|window|limit)(?: is| of)? \(?(\d[\d,]*)\)?", re.I),
    re.compile(r"> ?(\d[\d,]*) maximum", re.I),
    re.compile(r"limit of (\d[\d,]*) tokens", re.I),
)
_PROMPT_TOKENS = (
    re.compile(r"resulted in (\d[\d,]*) tokens", re.I),
    re.compile(r"has (\d[\d,]*) input tokens", re.I),
    re.compile(r"input token count \((\d[\d,]*)\)", re.I),
    re.compile(r"prompt is too long: (\d[\d,]*) tokens", re.I),
    re.compile(r"request \((\d[\d,]*) tokens\)", re.I),  # llama-server
    re.compile(r"(\d[\d,]*) tokens in the messages", re.I),
    re.compile(r"(?:requested|request has|prompt has|prompt contains) (\d[\d,]*) tokens", re.I),
)
_SPLIT = re.compile(r"(\d[\d,]*) in the messages, (\d[\d,]*) in the completion", re.I)
#: Error type for a numeric ``code`` inside a stream error (same table as §11.2).
_STREAM_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SECRET = re.compile(r"\b(?:sk|pk|rk|key)[-_][A-Za-z0-9_*.-]{6,}|\b[A-Za-z0-9]{32,}\b")


@attrs.frozen
class UpstreamProblem:
    """What could be read from an upstream error body (R-E1)."""

    message: str
    code: str | int | None = None
    type: str | None = None
    #: The error object itself when the body was JSON (vendor extras like ``n_ctx``).
    raw: dict[str, Any] = attrs.field(factory=dict, eq=False)


def _truncate(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _text_of(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if "<" in text and ">" in text:
        text = _TAG.sub(" ", text)
    return _truncate(_SPACE.sub(" ", text).strip())


def _problem_from_object(obj: Any) -> UpstreamProblem | None:
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, str):
        return UpstreamProblem(err, obj.get("code"), obj.get("type"), obj)
    if isinstance(err, dict):
        inner = err
    elif obj.get("object") == "error" or "message" in obj or "detail" in obj:
        inner = obj
    else:
        return None
    message = inner.get("message")
    if not isinstance(message, str):
        detail = inner.get("detail")
        message = detail if isinstance(detail, str) else ("" if detail is None else str(detail))
    metadata = inner.get("metadata")
    if isinstance(metadata, dict):
        raw = metadata.get("raw")
        if isinstance(raw, str) and raw and raw not in message:
            message = f"{message}: {raw}" if message else raw
        provider = metadata.get("provider_name")
        if isinstance(provider, str) and provider and provider not in message:
            message = f"{message} (provider {provider})"
    code = inner.get("code")
    kind = inner.get("type") if isinstance(inner.get("type"), str) else inner.get("status")
    return UpstreamProblem(
        _truncate(message),
        code if isinstance(code, (str, int)) and not isinstance(code, bool) else None,
        kind if isinstance(kind, str) else None,
        inner,
    )


def parse_problem(body: bytes | str | Any) -> UpstreamProblem:
    """Read message/code/type from an error body of any shape (R-E1); never raises."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        try:
            obj: Any = loads(raw.strip()) if raw.strip() else None
        except JSONDecodeError:
            return UpstreamProblem(_text_of(raw))
        except Exception:
            return UpstreamProblem(_text_of(raw))
    elif isinstance(body, str):
        try:
            obj = loads(body.strip()) if body.strip() else None
        except JSONDecodeError:
            return UpstreamProblem(_text_of(body.encode("utf-8", "replace")))
    else:
        obj = body
    problem = _problem_from_object(obj)
    if problem is not None:
        return problem
    if obj is None:
        return UpstreamProblem("")
    return UpstreamProblem(_truncate(str(obj)))


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        m = pattern.search(text)
        if m:
            return _number(m.group(1))
    return None


def is_context_overflow(problem: UpstreamProblem) -> bool:
    """Whether the upstream rejected the prompt as longer than the context (§11.2)."""
    haystack = f"{problem.message} {problem.code or ''} {problem.type or ''}".lower()
    return any(hint in haystack for hint in _OVERFLOW_HINTS)


def context_overflow_message(problem: UpstreamProblem) -> str:
    """
    Claude Code's compaction trigger text (anthropic-messages.md §9.4).

    ``prompt is too long: N tokens > M maximum`` when the numbers can be read; the
    ``input length and `max_tokens` exceed context limit`` form when only prompt plus
    completion overflow; else ``prompt is too long: <upstream message>``.
    """
    message = problem.message
    raw = problem.raw
    limit = raw.get("n_ctx") if isinstance(raw.get("n_ctx"), int) else None
    prompt = raw.get("n_prompt_tokens") if isinstance(raw.get("n_prompt_tokens"), int) else None
    if limit is None:
        limit = _first(_MAX_CONTEXT, message)
    split = _SPLIT.search(message)
    if split and limit is not None:
        used, completion = _number(split.group(1)), _number(split.group(2))
        if used <= limit:
            return (
                f"input length and `max_tokens` exceed context limit: {used} + {completion} > "
                f"{limit}, decrease input length or `max_tokens` and try again"
            )
        prompt = used
    if prompt is None:
        prompt = _first(_PROMPT_TOKENS, message)
    if prompt is not None and limit is not None and prompt > limit:
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return f"prompt is too long: {message or 'the upstream context window is full'}"


def _duration_seconds(value: str) -> float | None:
    """``"6m0s"``, ``"12ms"``, ``"1.5s"`` or a plain number of seconds."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    total = 0.0
    matched = False
    for amount, unit in _DURATION.findall(value):
        matched = True
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        total += float(amount) * scale
    return total if matched else None


def _retry_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    retry_after = headers.get("retry-after")
    if retry_after and retry_after.strip():
        out.append(("retry-after", retry_after.strip()))
    retry_ms = headers.get("retry-after-ms")
    if retry_ms and retry_ms.strip():
        out.append(("retry-after-ms", retry_ms.strip()))
    if out:
        return tuple(out)
    waits = [
        s
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset")
        if (v := headers.get(name)) and (s := _duration_seconds(v)) is not None
    ]
    if waits:
        out.append(("retry-after", str(max(1, math.ceil(max(waits))))))
    return tuple(out)


def _redact(text: str) -> str:
    return _SECRET.sub("[redacted]", text)


def _has_hint(problem: UpstreamProblem, hints: tuple[str, ...]) -> bool:
    haystack = f"{problem.message} {problem.code or ''} {problem.type or ''}".lower()
    return any(hint in haystack for hint in hints)


def _prefixed(upstream_name: str, message: str, fallback: str) -> str:
    return f"{upstream_name}: {message or fallback}"


def upstream_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    upstream_name: str,
    upstream_model: str,
) -> RelayError:
    """
    The Anthropic error for an upstream non-2xx answer (R-E2, mapping.md §11.2).

    :param headers: upstream response headers, names in lower case.
    """
    headers = headers or {}
    if 200 <= status < 300:
        return _not_a_stream(body, upstream_name)
    problem = parse_problem(body)
    message = _redact(problem.message)
    if status != 429 and is_context_overflow(problem):
        # Any status but a rate limit ("too many tokens per minute"): Claude Code must
        # compact, never retry the same prompt (MUST NOT be 5xx).
        return RelayError("invalid_request_error", context_overflow_message(problem))
    code = str(problem.code or "").lower()
    kind = (problem.type or "").lower()
    if status == 402 or "insufficient_quota" in (code, kind):
        return RelayError(
            "billing_error",
            _prefixed(upstream_name, message, "the upstream account has no credit left"),
            headers=(("x-should-retry", "false"),),
        )
    if status == 401:
        return RelayError(
            "authentication_error",
            f"{upstream_name} rejected the relay's upstream credential (HTTP 401); "
            "check the API key configured for this upstream",
        )
    if status == 403:
        return RelayError(
            "permission_error", _prefixed(upstream_name, message, "permission denied")
        )
    if status == 404:
        return RelayError(
            "not_found_error",
            f"{upstream_name}: not found (upstream model {upstream_model!r})"
            + (f": {message}" if message else ""),
        )
    if status in (408, 504):
        return RelayError("timeout_error", _prefixed(upstream_name, message, "upstream timed out"))
    if status == 409:
        return RelayError("conflict_error", _prefixed(upstream_name, message, "conflict"))
    if status == 413:
        return RelayError(
            "request_too_large", _prefixed(upstream_name, message, "request too large")
        )
    if status == 429:
        return RelayError(
            "rate_limit_error",
            _prefixed(upstream_name, message, "rate limited"),
            headers=_retry_headers(headers),
        )
    if status in (503, 529) or _has_hint(problem, _OVERLOAD_HINTS):
        return RelayError(
            "overloaded_error",
            _prefixed(upstream_name, message, "the upstream is overloaded"),
            headers=_retry_headers(headers),
        )
    if status >= 500:
        return RelayError("api_error", _prefixed(upstream_name, message, f"upstream HTTP {status}"))
    return RelayError(
        "invalid_request_error", _prefixed(upstream_name, message, f"upstream HTTP {status}")
    )


def _not_a_stream(body: bytes, upstream_name: str) -> RelayError:
    """A 2xx answer that is empty or bare JSON where an event stream was asked for."""
    if not body.strip():
        # llama-cpp-python answers an over-long prompt this way.
        return RelayError(
            "api_error",
            f"{upstream_name}: the upstream answered with an empty body (some servers do "
            "this when the prompt is longer than the model's context; configure "
            "max_input_tokens for the model to get a clear error first)",
            status=502,
        )
    if parse_problem(body).raw:  # an error object
        error = stream_error(body, upstream_name=upstream_name)
        # The upstream's failure, not ours: 502 rather than 500.
        return attrs.evolve(error, status=502) if error.type == "api_error" else error
    what = "JSON" if body.lstrip().startswith((b"{", b"[")) else "something"
    return RelayError("api_error", f"{upstream_name}: the upstream answered with {what} "
                      "instead of an event stream", status=502)


def stream_error(payload: Any, *, upstream_name: str = "upstream") -> RelayError:
    """
    The Anthropic error for an error reported inside a 200 stream (R-E4, openai-chat.md §8.2).

    ``payload`` is the decoded chunk (``{"error": …}``, ``{"object": "error", …}``), the
    value of an ``error:`` SSE field, or raw text; the HTTP status cannot change any more, so
    only the error type matters.
    """
    problem = parse_problem(payload)
    message = _redact(problem.message)
    code = problem.code
    status = code if isinstance(code, int) and 100 <= code <= 599 else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    if status != 429 and is_context_overflow(problem):
        return RelayError("invalid_request_error", context_overflow_message(problem))
    if status is not None and status in _STREAM_STATUS_TYPES:
        kind = _STREAM_STATUS_TYPES[status]
        if kind == "authentication_error":
            message = "the relay's upstream credential was rejected"
        return RelayError(kind, _prefixed(upstream_name, message, "upstream stream error"))
    if status is not None and status >= 500:
        return RelayError("api_error", _prefixed(upstream_name, message, "upstream stream error"))
    hay = f"{message} {code or ''} {problem.type or ''}".lower()
    if _has_hint(problem, _OVERLOAD_HINTS):
        kind = "overloaded_error"
    elif "rate" in hay and "limit" in hay:
        kind = "rate_limit_error"
    elif "timeout" in hay or "timed out" in hay:
        kind = "timeout_error"
    elif "invalid_request" in hay or "bad request" in hay:
        kind = "invalid_request_error"
    else:
        kind = "api_error"
    return RelayError(kind, _prefixed(upstream_name, message, "upstream stream error"))


def timeout_error(what: str) -> RelayError:
    """A relay-side upstream timeout (504 ``timeout_error``)."""
    return RelayError("timeout_error", f"upstream timed out: {what}")
