"""Upstream error mapping (mapping.md §11.1, §11.2, §11.4)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.protocol.openai import (
    connection_error,
    parse_problem,
    stream_error,
    timeout_error,
    upstream_error,
)


def err(status: int, body: Any, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return upstream_error(status, raw, headers or {}, upstream_name="up", upstream_model="m-1")


def openai_body(
    message: str, code: Any = None, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- R-E1 parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (openai_body("bad thing", "invalid_value"), "bad thing", "invalid_value"),
        (
            {"object": "error", "message": "vllm says", "type": "BadRequestError", "code": 400},
            "vllm says",
            400,
        ),
        (
            {"error": {"code": 402, "message": "Insufficient credits", "metadata": {}}},
            "Insufficient credits",
            402,
        ),
        (
            [{"error": {"code": 400, "message": "gemini", "status": "INVALID_ARGUMENT"}}],
            "gemini",
            400,
        ),
        ({"detail": "Invalid API Key"}, "Invalid API Key", None),
        ({"error": "plain string error"}, "plain string error", None),
    ],
)
def test_r_e1_body_shapes(body: Any, message: str, code: Any) -> None:
    problem = parse_problem(json.dumps(body).encode())
    assert problem.message == message
    assert problem.code == code


def test_r_e1_openrouter_metadata_raw_included() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "Provider returned error",
            "metadata": {"raw": "bad tool schema", "provider_name": "X"},
        }
    }
    assert parse_problem(json.dumps(body).encode()).message == (
        "Provider returned error: bad tool schema (provider X)"
    )


def test_r_e1_html_and_text_bodies_truncated() -> None:
    html = (
        b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body></html>"
    )
    problem = parse_problem(html)
    assert problem.message.startswith("502 Bad Gateway")
    assert "<" not in problem.message
    assert len(problem.message) <= 2001


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), status=st.integers(100, 599))
def test_r_e1_never_raises_on_garbage(body: bytes, status: int) -> None:
    error = upstream_error(status, body, {}, upstream_name="up", upstream_model="m")
    assert error.type
    assert error.status >= 400
    assert stream_error(body).type


# --- R-E2 table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            400,
            openai_body(
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 130412 tokens. Please reduce the length of the messages.",
                "context_length_exceeded",
            ),
            "prompt is too long: 130412 tokens > 128000 maximum",
        ),
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 32768 tokens. However, your "
                "request has 40000 input tokens. Please reduce the length of the input messages.",
                "code": 400,
            },
            "prompt is too long: 40000 tokens > 32768 maximum",
        ),
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 5000 tokens (4000 in the messages, 1000 in the completion). Please "
                "reduce the length of the messages or completion.",
                "code": 400,
            },
            "input length and `max_tokens` exceed context limit: 4000 + 1000 > 4096, "
            "decrease input length or `max_tokens` and try again",
        ),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "the request exceeds the available context size, try increasing it",
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 9000,
                    "n_ctx": 8192,
                }
            },
            "prompt is too long: 9000 tokens > 8192 maximum",
        ),
        (
            400,
            [
                {
                    "error": {
                        "code": 400,
                        "message": "The input token count (1200000) exceeds the maximum "
                        "number of tokens allowed (1048576).",
                        "status": "INVALID_ARGUMENT",
                    }
                }
            ],
            "prompt is too long: 1200000 tokens > 1048576 maximum",
        ),
        (
            500,
            {"error": {"message": "context window exceeded somewhere"}},
            "prompt is too long: context window exceeded somewhere",
        ),
    ],
)
def test_r_e2_context_overflow(status: int, body: Any, message: str) -> None:
    error = err(status, body)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.message == message


@pytest.mark.parametrize(
    ("status", "body", "kind", "http"),
    [
        (400, openai_body("Invalid value for tools"), "invalid_request_error", 400),
        (422, openai_body("Invalid max_tokens"), "invalid_request_error", 400),
        (403, openai_body("flagged by moderation"), "permission_error", 403),
        (408, b"request timeout", "timeout_error", 504),
        (504, b"<html>Gateway Timeout</html>", "timeout_error", 504),
        (409, openai_body("conflict"), "conflict_error", 409),
        (413, b"payload too large", "request_too_large", 413),
        (500, openai_body("internal", kind="server_error"), "api_error", 500),
        (502, b"Bad gateway", "api_error", 500),
        (503, openai_body("overloaded"), "overloaded_error", 529),
        (529, b"", "overloaded_error", 529),
        (404, openai_body("The model `m-1` does not exist"), "not_found_error", 404),
        (418, b"teapot", "invalid_request_error", 400),
    ],
)
def test_r_e2_status_table(status: int, body: Any, kind: str, http: int) -> None:
    error = err(status, body)
    assert (error.type, error.status) == (kind, http)
    assert error.message.startswith("up")


def test_r_e2_upstream_message_kept_with_prefix() -> None:
    assert err(400, openai_body("Invalid value for tools")).message == "up: Invalid value for tools"


def test_r_e2_404_mentions_the_mapped_model() -> None:
    assert "'m-1'" in err(404, openai_body("no such model")).message


def test_r_e2_openrouter_no_provider_is_overloaded() -> None:
    body = {
        "error": {
            "code": 404,
            "message": "No endpoints found that can handle the requested parameters.",
        }
    }
    assert err(404, body).type == "not_found_error"  # a 404 stays a 404
    body = {"error": {"code": 400, "message": "No provider available for this request"}}
    error = err(400, body)
    assert (error.type, error.status) == ("overloaded_error", 529)


def test_r_e2_401_blames_the_relay_credential_without_echoing_it() -> None:
    error = err(
        401,
        openai_body("Incorrect API key provided: sk-proj-abcdef1234567890XYZ", "invalid_api_key"),
    )
    assert (error.type, error.status) == ("authentication_error", 401)
    assert "relay's upstream credential" in error.message
    assert "sk-proj" not in error.message


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (402, {"error": {"code": 402, "message": "Insufficient Balance"}}),
        (
            429,
            openai_body(
                "You exceeded your current quota", "insufficient_quota", "insufficient_quota"
            ),
        ),
    ],
)
def test_r_e2_billing(status: int, body: Any) -> None:
    error = err(status, body)
    assert (error.type, error.status) == ("billing_error", 402)
    assert ("x-should-retry", "false") in error.headers


def test_r_e2_429_passes_retry_after() -> None:
    error = err(
        429,
        openai_body("slow down", "rate_limit_exceeded"),
        {"retry-after": "3", "retry-after-ms": "3000"},
    )
    assert (error.type, error.status) == ("rate_limit_error", 429)
    assert dict(error.headers) == {"retry-after": "3", "retry-after-ms": "3000"}


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"x-ratelimit-reset-requests": "12ms"}, "1"),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, "360"),
        ({"x-ratelimit-reset-tokens": "2.5s"}, "3"),
    ],
)
def test_r_e2_429_retry_after_from_ratelimit_reset(headers: dict[str, str], seconds: str) -> None:
    assert dict(err(429, b"{}", headers).headers) == {"retry-after": seconds}


def test_r_e2_429_without_hints_has_no_retry_header() -> None:
    assert err(429, b"{}").headers == ()


def test_secrets_redacted_from_messages() -> None:
    error = err(400, openai_body("bad key sk-abcdefghijklmnop used"))
    assert "sk-abcdefghijklmnop" not in error.message


def test_connection_and_timeout_errors() -> None:
    error = connection_error("connection refused")
    assert (error.type, error.status) == ("api_error", 502)
    assert error.message == "upstream connection failed: connection refused"
    error = timeout_error("no response headers after 600 s")
    assert (error.type, error.status) == ("timeout_error", 504)


# --- R-E4 stream errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (
            {"error": {"message": "The server is overloaded", "type": "server_error"}},
            "overloaded_error",
        ),
        ({"error": {"message": "boom", "type": "server_error", "code": None}}, "api_error"),
        ({"error": {"code": 429, "message": "Rate limit exceeded"}}, "rate_limit_error"),
        ({"error": {"code": 502, "message": "Provider disconnected"}}, "api_error"),
        ({"object": "error", "message": "engine dead", "code": 503}, "overloaded_error"),
        ('{"code":500,"message":"slot failed","type":"server_error"}', "api_error"),
        ({"error": {"message": "request timed out"}}, "timeout_error"),
        (
            {"error": {"message": "maximum context length is 10 tokens, resulted in 20 tokens"}},
            "invalid_request_error",
        ),
        (
            {"error": {"code": 401, "message": "key sk-secret1234567 revoked"}},
            "authentication_error",
        ),
        ("not json at all", "api_error"),
    ],
)
def test_r_e4_stream_error_types(payload: Any, kind: str) -> None:
    error = stream_error(payload, upstream_name="up")
    assert error.type == kind
    assert "sk-secret" not in error.message
    assert error.event() == {"type": "error", "error": {"type": kind, "message": error.message}}


def test_rate_limit_mentioning_tokens_is_not_a_context_overflow() -> None:
    body = openai_body("Too many tokens per minute, please slow down", "rate_limit_exceeded")
    assert err(429, body).type == "rate_limit_error"
    assert stream_error({"error": {"code": 429, "message": "too many tokens"}}).type == (
        "rate_limit_error"
    )
