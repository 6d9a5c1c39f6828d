"""Backend kinds as plugins: strict options with config paths, per-model dialect overrides."""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.verify import verifyObject

from txrelay.config import parse_config
from txrelay.interfaces import IBackend, IBackendFactory
from txrelay.protocol.openai.dialect import PRESETS
from txrelay.service import backend_factories, build_backend
from txrelay.upstream.demo import DemoBackend
from txrelay.upstream.httpbackend import HTTPBackend
from txrelay.upstream.openai import OpenAIChatCodec


def config(provider: dict[str, Any], models: list[dict[str, Any]]) -> Any:
    return parse_config({
        "providers": [provider],
        "models": models,
        "pipeline": [{"type": "model-map"}, {"type": "translate"}],
    })


def build(provider: dict[str, Any], models: list[dict[str, Any]] | None = None,
          ) -> tuple[Any, list[str]]:
    cfg = config(provider, models or [{"id": "m", "provider": provider["name"]}])
    problems: list[str] = []
    return build_backend(cfg.providers[0], "providers[0]", None, problems, cfg), problems


def test_builtin_kinds_are_plugins() -> None:
    kinds = backend_factories()
    assert {"demo", "openai-chat"} <= set(kinds)
    for factory in kinds.values():
        verifyObject(IBackendFactory, factory)
    for provider in ({"name": "d", "kind": "demo"},
                     {"name": "o", "kind": "openai-chat", "base_url": "http://127.0.0.1:1"}):
        backend, problems = build(provider)
        assert problems == []
        verifyObject(IBackend, backend)


def test_per_model_dialect_overrides_merge_over_the_provider() -> None:
    backend, problems = build(
        {"name": "up", "kind": "openai-chat", "base_url": "http://127.0.0.1:1/v1",
         "options": {"dialect": "deepseek", "supports_top_k": True}},
        [{"id": "plain", "provider": "up"},
         {"id": "tuned", "provider": "up", "options": {"think_tags": True}},
         {"id": "other", "provider": "up", "options": {"dialect": "openai"}}],
    )
    assert problems == []
    assert isinstance(backend, HTTPBackend)
    codec = backend.codec
    assert isinstance(codec, OpenAIChatCodec)
    assert codec.dialect.reasoning_input == "reasoning_content" and codec.dialect.supports_top_k
    assert set(codec.model_dialects) == {"tuned", "other"}
    tuned = codec.model_dialects["tuned"]
    assert tuned.think_tags and tuned.supports_top_k
    assert tuned.reasoning_input == "reasoning_content"
    assert codec.model_dialects["other"] == PRESETS["openai"]


@pytest.mark.parametrize(("provider", "models", "expected"), [
    ({"options": {"dialect": "nope"}}, None,
     "providers[0].options.dialect: unknown dialect 'nope'"),
    ({"options": {"supports_top_k": "yes"}}, None,
     "providers[0].options.supports_top_k: expected a boolean"),
    ({"options": {"unknown_switch": 1}}, None,
     "providers[0].options: unknown key(s): unknown_switch"),
    ({"options": {"chat_path": "chat"}}, None,
     "providers[0].options.chat_path: must be a path starting with /"),
    ({}, [{"id": "m", "provider": "up", "options": {"dialect": "nope"}}],
     "models[0].options.dialect: unknown dialect 'nope'"),
    ({}, [{"id": "a", "provider": "up"}, {"id": "m", "provider": "up",
                                          "options": {"chat_path": "/x"}}],
     "models[1].options: unknown key(s): chat_path"),
    ({"base_url": None}, None, "providers[0].base_url: required for kind 'openai-chat'"),
])
def test_problems_are_reported_with_their_config_path(
        provider: dict[str, Any], models: list[dict[str, Any]] | None, expected: str) -> None:
    raw = {"name": "up", "kind": "openai-chat", "base_url": "http://127.0.0.1:1/v1", **provider}
    raw = {k: v for k, v in raw.items() if v is not None}
    backend, problems = build(raw, models)
    assert backend is None
    assert any(p.startswith(expected) for p in problems), problems


def test_demo_options_and_no_model_options() -> None:
    backend, problems = build({"name": "d", "kind": "demo", "options": {"event_delay": 0.5}})
    assert problems == [] and isinstance(backend, DemoBackend)
    assert backend.options.event_delay == 0.5
    backend, problems = build({"name": "d", "kind": "demo"},
                              [{"id": "m", "provider": "d", "options": {"x": 1}}])
    assert backend is None
    assert problems == ["models[0].options: provider kind 'demo' takes no model options"]


def test_unknown_kind_lists_the_available_ones() -> None:
    _, problems = build({"name": "x", "kind": "bedrock"})
    assert problems[0].startswith("providers[0].kind: unknown provider kind 'bedrock' "
                                  "(available: ")
    available = problems[0].split("(available: ", 1)[1].rstrip(")").split(", ")
    assert {"anthropic", "demo", "gemini", "openai-chat"} <= set(available)
    assert available == sorted(available)
