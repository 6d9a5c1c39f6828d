"""The gemini kind's configuration: front doors, URLs, model paths, option problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from tests.fakegemini import service_account_file
from txrelay.catalog import Route
from txrelay.config import ModelConfig, parse_config
from txrelay.interfaces import IBackend
from txrelay.protocol.anthropic import request_from_json
from txrelay.protocol.errors import RelayError
from txrelay.service import build_backend
from txrelay.upstream.gemini import ApiKeyAuth, GeminiBackend
from txrelay.upstream.vertex_auth import VertexAuth

ENV = {"GEMINI_KEY": "AIza-unit"}


def build(provider: dict[str, Any], models: list[dict[str, Any]] | None = None,
          ) -> tuple[Any, list[str]]:
    cfg = parse_config({
        "providers": [{"name": "g", "kind": "gemini", **provider}],
        "models": models or [{"id": "m", "provider": "g"}],
        "pipeline": [{"type": "translate"}],
    }, env=ENV)
    problems: list[str] = []
    return build_backend(cfg.providers[0], "providers[0]", None, problems, cfg), problems


def route(upstream: str) -> Route:
    return Route("m", "g", upstream, ModelConfig(id="m", provider="g"))


REQUEST = request_from_json({"model": "m", "max_tokens": 10, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})


def test_ai_studio_default_url_and_key_header() -> None:
    backend, problems = build({"api_key": {"env": "GEMINI_KEY"}})
    assert problems == []
    verifyObject(IBackend, backend)
    assert isinstance(backend, GeminiBackend) and isinstance(backend.auth, ApiKeyAuth)
    assert backend.base_url == "https://generativelanguage.googleapis.com/v1beta"
    call = backend.gemini.prepare(REQUEST, route("gemini-2.5-pro"), 5)
    assert call.request.path == "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert "AIza" not in call.request.path
    assert backend.gemini.path("tunedModels/mine", "generateContent") == \
        "/tunedModels/mine:generateContent"
    assert "AIza-unit" not in repr(backend.auth)


@pytest.mark.parametrize(("options", "url", "path"), [
    ({"project": "my-proj", "location": "us-central1"},
     "https://us-central1-aiplatform.googleapis.com/v1",
     "/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-pro:"
     "countTokens"),
    ({"project": "my-proj", "location": "global", "api_version": "v1beta1"},
     "https://aiplatform.googleapis.com/v1beta1",
     "/projects/my-proj/locations/global/publishers/google/models/gemini-2.5-pro:countTokens"),
])
def test_vertex_urls(tmp_path: Path, options: dict[str, Any], url: str, path: str) -> None:
    sa = tmp_path / "sa.json"
    service_account_file(sa, "http://127.0.0.1:9/token")
    backend, problems = build({"options": {"api": "vertex", "credentials_file": str(sa),
                                           **options}})
    assert problems == []
    assert isinstance(backend.auth, VertexAuth)
    assert backend.base_url == url
    assert backend.gemini.path("gemini-2.5-pro", "countTokens") == path
    assert backend.gemini.path("publishers/google/models/gemini-2.5-pro", "countTokens") == path


def test_vertex_express_mode_uses_the_key() -> None:
    backend, problems = build({"api_key": {"env": "GEMINI_KEY"}, "options": {"api": "vertex"}})
    assert problems == []
    assert isinstance(backend.auth, ApiKeyAuth)
    assert backend.base_url == "https://aiplatform.googleapis.com/v1"
    assert backend.gemini.path("gemini-2.5-flash", "generateContent") == \
        "/publishers/google/models/gemini-2.5-flash:generateContent"


def test_base_url_overrides_the_host() -> None:
    backend, _ = build({"api_key": {"env": "GEMINI_KEY"}, "base_url": "http://127.0.0.1:1/v1beta/"})
    assert backend.base_url == "http://127.0.0.1:1/v1beta"


@pytest.mark.parametrize("model", ["../../v1/other", "gemini?key=x", "a b", "models/../x", ""])
def test_a_model_name_that_is_no_model_id_never_reaches_the_url(model: str) -> None:
    backend, _ = build({"api_key": {"env": "GEMINI_KEY"}})
    with pytest.raises(RelayError) as info:
        backend.gemini.prepare(REQUEST, route(model), 5)
    assert info.value.type == "invalid_request_error"


@pytest.mark.parametrize(("provider", "problem"), [
    ({}, "providers[0].api_key: required for api = \"ai-studio\""),
    ({"api_key": {"env": "GEMINI_KEY"}, "options": {"api": "bard"}},
     "providers[0].options.api: unknown api 'bard'"),
    ({"api_key": {"env": "GEMINI_KEY"}, "options": {"project": "p"}},
     "providers[0].options.project: only for api = \"vertex\""),
    ({"options": {"api": "vertex"}}, "providers[0].options.project: required for api = "
     "\"vertex\""),
    ({"options": {"api": "vertex", "project": "p-proj", "location": "US Central"}},
     "providers[0].options.location: 'US Central' is not a Google Cloud location"),
    ({"api_key": {"env": "GEMINI_KEY"}, "options": {"thinking_style": "loud"}},
     "providers[0].options.thinking_style: unknown thinking style 'loud'"),
    ({"api_key": {"env": "GEMINI_KEY"}, "options": {"colour": "red"}},
     "providers[0].options: unknown key(s): colour"),
])
def test_option_problems_name_their_path(provider: dict[str, Any], problem: str) -> None:
    backend, problems = build(provider)
    assert backend is None
    assert any(p.startswith(problem) for p in problems), problems


def test_per_model_options(tmp_path: Path) -> None:
    backend, problems = build(
        {"api_key": {"env": "GEMINI_KEY"}, "options": {
            "safety_settings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                 "threshold": "BLOCK_NONE"}]}},
        [{"id": "m", "provider": "g"},
         {"id": "t", "provider": "g", "options": {"thinking_style": "none"}},
         {"id": "bad", "provider": "g", "options": {"thinking_style": "x"}}])
    assert backend is None
    assert problems == ["models[2].options.thinking_style: unknown thinking style 'x' (one of "
                        "budget, level, none)"]
    backend, problems = build(
        {"api_key": {"env": "GEMINI_KEY"}, "options": {
            "safety_settings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                 "threshold": "BLOCK_NONE"}]}},
        [{"id": "m", "provider": "g"},
         {"id": "t", "provider": "g", "options": {"thinking_style": "none"}}])
    assert problems == []
    thinking = request_from_json({"model": "t", "max_tokens": 4000, "messages": [
        {"role": "user", "content": "hi"}], "thinking": {"type": "enabled",
                                                           "budget_tokens": 2048}})

    plain = json.loads(backend.gemini.prepare(thinking, route("gemini-2.5-pro"), 5).request.body)
    assert "thinkingConfig" in plain["generationConfig"]
    assert plain["safetySettings"] == [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                        "threshold": "BLOCK_NONE"}]
    tuned = Route("t", "g", "gemini-2.5-pro", ModelConfig(id="t", provider="g"))
    body = json.loads(backend.gemini.prepare(thinking, tuned, 5).request.body)
    assert "thinkingConfig" not in body.get("generationConfig", {})
    assert body["safetySettings"] == plain["safetySettings"]


def test_a_bad_credentials_file_is_a_config_problem(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    backend, problems = build({"options": {"api": "vertex", "project": "p-proj",
                                           "credentials_file": str(path)}})
    assert backend is None
    assert problems == [f"providers[0].options.credentials_file: service account file {path}: "
                        "cannot be read (no such file or directory)"]


def _malformed_stream() -> bytes:
    body = json.dumps({"candidates": [{"index": 0, "finishReason": "MALFORMED_FUNCTION_CALL"}]})
    return f"data: {body}\n\n".encode()


def test_a_first_attempt_ends_with_a_retryable_error_on_a_malformed_call_before_commit() -> None:
    backend, _ = build({"api_key": {"env": "GEMINI_KEY"}})
    call = backend.gemini.prepare(REQUEST, route("gemini-2.5-pro"), 5, may_retry=True)
    guard = call.translator()
    guard.committed = lambda: False  # type: ignore[attr-defined]
    guard.start()
    assert [e["type"] for e in guard.feed(_malformed_stream())] == ["error"]
    assert guard.done and guard.error.status == 502 and call.retry_reason == "malformed"
    assert guard.feed(b"data: {}\n\n") == [] and guard.finish() == []


def test_a_malformed_call_after_the_commit_or_on_the_retry_is_explained() -> None:
    backend, _ = build({"api_key": {"env": "GEMINI_KEY"}})
    committed = backend.gemini.prepare(REQUEST, route("gemini-2.5-pro"), 5, may_retry=True)
    guard = committed.translator()
    guard.committed = lambda: True  # type: ignore[attr-defined]
    retry = backend.gemini.prepare(REQUEST, route("gemini-2.5-pro"), 5, may_retry=False)
    for translator in (guard, retry.translator()):
        translator.start()
        events = translator.feed(_malformed_stream()) + translator.finish()
        assert events[-1]["type"] == "message_stop"
        texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
        assert texts == ["[upstream returned a malformed tool call]"]
    assert committed.retry_reason is None and retry.retry_reason is None
