"""Gemini errors → Anthropic errors (mapping.md §11.3, R-E3)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import json_values
from txrelay.protocol.errors import RelayError
from txrelay.protocol.gemini import gemini_error, gemini_stream_error


def body(code: int, status: str, message: str, *details: dict[str, Any],
         wrap: bool = False) -> bytes:
    err = {"error": {"code": code, "message": message, "status": status,
                     "details": list(details)}}
    return json.dumps([err] if wrap else err).encode()


def err(status: int, raw: bytes, headers: dict[str, str] | None = None) -> RelayError:
    return gemini_error(status, raw, headers, upstream_name="gemini",
                        upstream_model="gemini-2.5-pro")


KEY_INVALID = body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
    "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}})


@pytest.mark.parametrize("wrap", [False, True])
def test_invalid_api_key_400_is_a_401(wrap: bool) -> None:
    raw = KEY_INVALID if not wrap else json.dumps([json.loads(KEY_INVALID)]).encode()
    e = err(400, raw)
    assert (e.status, e.type) == (401, "authentication_error")
    assert "upstream credential" in e.message


def test_quota_is_a_429_with_retry_after_from_retry_info() -> None:
    e = err(429, body(429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric ...", {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}, {
        "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26.4s"}))
    assert (e.status, e.type) == (429, "rate_limit_error")
    assert dict(e.headers)["retry-after"] == "27"


def test_quota_without_retry_info_keeps_the_header() -> None:
    e = err(429, body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"),
            {"retry-after": "5"})
    assert dict(e.headers) == {"retry-after": "5"}


def test_overloaded_is_a_529() -> None:
    e = err(503, body(503, "UNAVAILABLE", "The model is overloaded. Please try again later."))
    assert (e.status, e.type) == (529, "overloaded_error")
    assert "overloaded" in e.message


def test_invalid_argument_keeps_geminis_message() -> None:
    message = ('Invalid JSON payload received. Unknown name "additionalProperties" at '
               "'tools[0].function_declarations[0].parameters': Cannot find field.")
    e = err(400, body(400, "INVALID_ARGUMENT", message))
    assert (e.status, e.type) == (400, "invalid_request_error")
    assert e.message == f"gemini: {message}"


@pytest.mark.parametrize(("message", "expected"), [
    ("The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
     "prompt is too long: 1200000 tokens > 1048576 maximum"),
    ("The input token count exceeds the maximum number of tokens allowed 1,048,576.",
     "prompt is too long: The input token count exceeds the maximum number of tokens allowed "
     "1,048,576."),
])
def test_context_overflow_uses_claude_codes_wording(message: str, expected: str) -> None:
    e = err(400, body(400, "INVALID_ARGUMENT", message))
    assert (e.status, e.type) == (400, "invalid_request_error")
    assert e.message == expected


def test_not_found_names_the_model() -> None:
    e = err(404, body(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"))
    assert (e.status, e.type) == (404, "not_found_error")
    assert "gemini-2.5-pro" in e.message


@pytest.mark.parametrize(("status", "rpc", "expected"), [
    (400, "FAILED_PRECONDITION", (403, "permission_error")),
    (401, "UNAUTHENTICATED", (401, "authentication_error")),
    (403, "PERMISSION_DENIED", (403, "permission_error")),
    (499, "CANCELLED", (500, "api_error")),
    (500, "INTERNAL", (500, "api_error")),
    (504, "DEADLINE_EXCEEDED", (504, "timeout_error")),
    (502, "", (500, "api_error")),
    (418, "", (400, "invalid_request_error")),
])
def test_status_table(status: int, rpc: str, expected: tuple[int, str]) -> None:
    e = err(status, body(status, rpc, "something"))
    assert (e.status, e.type) == expected


def test_html_and_empty_bodies() -> None:
    e = err(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    assert e.type == "api_error" and "502 Bad Gateway" in e.message and "<" not in e.message
    assert err(503, b"").type == "overloaded_error"


def test_api_keys_never_echoed() -> None:
    key = "AIzaSyD-1234567890abcdefghijklmnopqrstu"
    e = err(403, body(403, "PERMISSION_DENIED", f"key {key} was reported as leaked"))
    assert key not in e.message


def test_stream_error_payload() -> None:
    e = gemini_stream_error({"error": {"code": 500, "message": "Internal error encountered.",
                                       "status": "INTERNAL"}})
    assert e.type == "api_error"
    e = gemini_stream_error([{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                        "message": "quota"}}])
    assert e.type == "rate_limit_error"


@settings(max_examples=300, deadline=None)
@given(payload=json_values, status=st.integers(100, 999), raw=st.binary(max_size=50))
def test_never_raises(payload: Any, status: int, raw: bytes) -> None:
    for e in (err(status, json.dumps({"error": payload}).encode()), err(status, raw),
              gemini_stream_error(payload), gemini_stream_error({"error": payload})):
        assert isinstance(e, RelayError)
        assert e.message
        assert "Traceback" not in e.message


def test_vertex_overflow_wording() -> None:
    e = err(400, body(400, "INVALID_ARGUMENT", "Unable to submit request because the input "
                      "token count is 1234567 but model only supports up to 1048576. Reduce "
                      "the input token count and try again."))
    assert e.message == "prompt is too long: 1234567 tokens > 1048576 maximum"


def test_signature_rejection_is_recognised() -> None:
    from txrelay.protocol.gemini import is_signature_rejection

    assert is_signature_rejection(400, body(400, "INVALID_ARGUMENT",
                                            "Corrupted thought signature."))
    assert is_signature_rejection(400, body(400, "INVALID_ARGUMENT", "Invalid thought signature"))
    assert not is_signature_rejection(400, body(400, "INVALID_ARGUMENT", "Function call is "
                                                "missing a thought_signature in functionCall"))
    assert not is_signature_rejection(500, b"Invalid thought signature")
