"""
A third-party backend kind, installed from a plugin directory outside the package and served
by configuration alone (README "Writing a backend").
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, json_response, sse, text_stream
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

TENANT_PLUGIN = '''
import itertools

import attrs
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import IBackendFactory
from txrelay.protocol.openai.dialect import PRESETS
from txrelay.upstream.httpbackend import http_backend
from txrelay.upstream.openai import OpenAIChatCodec


@attrs.frozen
class TenantOptions:
    tenant: str
    token_prefix: str = "tok"


@attrs.frozen
class TenantCodec:
    """Chat Completions under a per-tenant path, with a tenant header."""

    inner: OpenAIChatCodec
    tenant: str

    def prepare(self, request, route, input_tokens):
        call = self.inner.prepare(request, route, input_tokens)
        wire = attrs.evolve(call.request, path=f"/tenants/{self.tenant}/chat",
                            headers={"x-tenant": self.tenant})
        return attrs.evolve(call, request=wire)


@attrs.define
class RefreshingToken:
    """An OAuth-like token, fetched without blocking the reactor before each request."""

    reactor: object
    prefix: str
    counter: object = attrs.Factory(lambda: itertools.count(1))

    async def headers(self):
        await deferLater(self.reactor, 0.01, lambda: None)
        return {"authorization": f"Bearer {self.prefix}-{next(self.counter)}"}


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class TenantChat:
    kind: str = "tenant-chat"
    options_type: type = TenantOptions
    model_options_type: None = None

    def build(self, options, context):
        codec = TenantCodec(OpenAIChatCodec(context.provider.name, PRESETS["generic"]),
                            options.tenant)
        return http_backend(context, codec, RefreshingToken(context.reactor,
                                                            options.token_prefix))


tenant_chat = TenantChat()
'''


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    plugins = tmp_path / "site" / "txrelay" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "tenant_backend.py").write_text(textwrap.dedent(TENANT_PLUGIN))
    return tmp_path / "site"


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


def test_a_backend_plugin_serves_by_config_alone(tmp_path: Path, site: Path,
                                                 fake: FakeOpenAI) -> None:
    cfg = config_text(
        providers=[{"name": "acme", "kind": "tenant-chat", "base_url": fake.url,
                    "options": {"tenant": "blue", "token_prefix": "oauth"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "acme", "upstream_model": "m1"}],
    )
    relay = start_relay(tmp_path, cfg, env={"PYTHONPATH": str(site)})
    try:
        fake.push(sse(text_stream("from the tenant")),
                  json_response({"id": "c", "object": "chat.completion", "model": "m1",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant",
                                                          "content": "plain"}}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}}))
        with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
            with c.messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                   messages=[{"role": "user", "content": "hi"}]) as s:
                assert "".join(s.text_stream) == "from the tenant"
            reply = c.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                                      messages=[{"role": "user", "content": "hi"}])
            assert reply.content[0].text == "plain"  # type: ignore[union-attr]
        first, second = fake.requests[-2:]
        assert first.path == second.path == "/v1/tenants/blue/chat"
        assert first.headers["x-tenant"] == "blue"
        assert first.headers["authorization"] == "Bearer oauth-1"
        assert second.headers["authorization"] == "Bearer oauth-2"
        assert first.body["model"] == "m1"
    finally:
        relay.stop()


def test_a_backend_plugin_options_are_checked_strictly_with_paths(tmp_path: Path,
                                                                  site: Path) -> None:
    cfg = config_text(
        providers=[{"name": "acme", "kind": "tenant-chat",
                    "options": {"tenant": "blue", "tennant": "x"}},
                   {"name": "other", "kind": "no-such-kind"}],
        models=[{"id": "claude-sonnet-4-6", "provider": "acme"}],
    )
    path = tmp_path / "relay.toml"
    path.write_text(cfg)
    result = subprocess.run([sys.executable, "-m", "txrelay", "check-config", str(path)],
                            check=False, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "providers[0].options: unknown key(s): tennant" in result.stderr
    assert "providers[1].kind: unknown provider kind 'no-such-kind'" in result.stderr
    assert "tenant-chat" in result.stderr  # listed among the available kinds
    assert "Traceback" not in result.stderr
