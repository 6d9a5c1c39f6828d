"""Context-overflow wordings and 2xx bodies that are not event streams (protocol/openai/errors)."""

from __future__ import annotations

import json

import pytest

from txrelay.protocol.openai.errors import upstream_error


def mapped(status: int, body: bytes) -> tuple[int, str, str]:
    e = upstream_error(status, body, {}, upstream_name="up", upstream_model="m")
    return e.status, e.type, e.message


@pytest.mark.parametrize("status", [400, 500, 200])
def test_llama_server_overflow(status: int) -> None:
    body = json.dumps({"error": {
        "code": 400, "type": "exceed_context_size_error",
        "message": "request (9000 tokens) exceeds the available context size (4096 tokens), "
                   "try increasing it"}}).encode()
    assert mapped(status, body) == (400, "invalid_request_error",
                                    "prompt is too long: 9000 tokens > 4096 maximum")


@pytest.mark.parametrize("message", [
    "the prompt exceeds the context window of this model",
    "Context size has been exceeded.",
    "too many input tokens",
])
def test_other_overflow_wordings(message: str) -> None:
    status, kind, text = mapped(400, json.dumps({"error": {"message": message}}).encode())
    assert (status, kind) == (400, "invalid_request_error")
    assert text.startswith("prompt is too long: ")


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "up: the upstream answered with an empty body"),
    (b'{"id": "x", "choices": []}', "up: the upstream answered with JSON instead of an event "
                                    "stream"),
    (b"<html>ok</html>", "up: the upstream answered with something instead of an event stream"),
    (b'{"error": {"message": "boom"}}', "up: boom"),
])
def test_a_2xx_that_is_not_a_stream_is_a_502_in_plain_words(body: bytes, expected: str) -> None:
    status, kind, text = mapped(200, body)
    assert (status, kind) == (502, "api_error")
    assert text.startswith(expected)
    assert "{'" not in text  # never a Python repr
