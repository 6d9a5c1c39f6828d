"""The anthropic kind's configuration: transports, options checked with their paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from tests.fakegemini import service_account_file
from tests.test_backends import build
from txrelay.interfaces import IBackend
from txrelay.service import backend_factories
from txrelay.upstream.anthropic import AnthropicBackend, ApiKeyAuth, vertex_base_url
from txrelay.upstream.codec import BearerAuth
from txrelay.upstream.vertex_auth import VertexAuth


def provider(**extra: Any) -> dict[str, Any]:
    return {"name": "ant", "kind": "anthropic", **extra}


def test_anthropic_kind_is_a_plugin() -> None:
    assert "anthropic" in backend_factories()
    backend, problems = build(provider(base_url="https://api.anthropic.com/"))
    assert problems == []
    verifyObject(IBackend, backend)
    assert isinstance(backend, AnthropicBackend)
    assert backend.transport.messages_url("m", True, {"beta": "true"}) == (
        "https://api.anthropic.com/v1/messages?beta=true")
    assert isinstance(backend.auth, ApiKeyAuth)


def test_bearer_auth_and_problems() -> None:
    backend, problems = build(provider(base_url="http://127.0.0.1:1",
                                       options={"auth": "bearer"}))
    assert problems == [] and isinstance(backend.auth, BearerAuth)
    _, problems = build(provider())
    assert problems == ["providers[0].base_url: required for kind 'anthropic' "
                        "(https://api.anthropic.com for the Anthropic API)"]
    _, problems = build(provider(base_url="http://x", options={"auth": "cookie"}))
    assert problems == ["providers[0].options.auth: unknown auth 'cookie' "
                        "(one of x-api-key, bearer)"]
    _, problems = build(provider(base_url="http://x", options={"api": "bedrock"}))
    assert problems == ["providers[0].options.api: unknown api 'bedrock' (anthropic or vertex)"]
    _, problems = build(provider(base_url="http://x", options={"strip_beta": ["a"]}))
    assert problems and problems[0].startswith("providers[0].options")


def test_vertex_transport_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_TEST_VERTEX_TOK", "tok")
    backend, problems = build(provider(api_key={"env": "TXRELAY_TEST_VERTEX_TOK"}, options={
        "api": "vertex", "project": "p", "location": "europe-west1"}))
    assert problems == []
    t = backend.transport
    assert t.base_url == "https://europe-west1-aiplatform.googleapis.com/v1"
    assert t.messages_url("claude-x@2025", False, {"beta": "true"}) == (
        "https://europe-west1-aiplatform.googleapis.com/v1/projects/p/locations/europe-west1/"
        "publishers/anthropic/models/claude-x@2025:rawPredict")
    assert t.body_edits("claude-x", count=False) == (None, {"anthropic_version":
                                                            "vertex-2023-10-16"})
    assert vertex_base_url("global") == "https://aiplatform.googleapis.com/v1"
    _, problems = build(provider(options={"api": "vertex", "project": "p"}))
    assert problems == ["providers[0].options: api = 'vertex' needs project and location"]


def test_claude_on_vertex_uses_the_shared_google_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vertex = {"api": "vertex", "project": "p", "location": "us-east5"}
    # No api_key: Application Default Credentials, through the gemini kind's token source.
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    backend, problems = build(provider(options=vertex))
    assert problems == [] and isinstance(backend.auth, VertexAuth)
    # A service-account file, checked at start with its path named.
    good = tmp_path / "sa.json"
    service_account_file(good, "http://127.0.0.1:9/token")
    backend, problems = build(provider(options={**vertex, "credentials_file": str(good)}))
    assert problems == [] and isinstance(backend.auth, VertexAuth)
    missing = tmp_path / "missing.json"
    _, problems = build(provider(options={**vertex, "credentials_file": str(missing)}))
    assert len(problems) == 1
    assert problems[0].startswith(f"providers[0].options.credentials_file: service account "
                                  f"file {missing}: cannot be read"), problems
