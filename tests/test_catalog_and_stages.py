"""Model routing and the built-in stages, tested with the public txrelay.testing helpers."""

from __future__ import annotations

import pytest

from txrelay.catalog import ModelCatalog
from txrelay.config import ConfigError, hash_key, parse_config
from txrelay.pipeline import Reply
from txrelay.stages.auth import AuthStage, presented_key
from txrelay.stages.modelmap import ModelMapStage
from txrelay.testing import build_stage, make_exchange, run_stage, text_reply, tool_reply

CONFIG = {
    "providers": [{"name": "demo", "kind": "demo"}, {"name": "local", "kind": "demo"}],
    "models": [
        {"id": "claude-sonnet-4-6", "provider": "demo", "aliases": ["sonnet"],
         "upstream_model": "big"},
        {"id": "fast", "provider": "local", "patterns": ["claude-*-haiku-*", "claude-haiku-*"]},
        {"id": "rest", "provider": "demo", "patterns": ["claude-*"], "listed": False},
    ],
    "pipeline": [{"type": "translate"}],
}


@pytest.fixture()
def catalog() -> ModelCatalog:
    return ModelCatalog.from_config(parse_config(CONFIG, env={}))


@pytest.mark.parametrize("name, provider, upstream", [
    ("claude-sonnet-4-6", "demo", "big"),
    ("sonnet", "demo", "big"),
    ("claude-3-5-haiku-20241022", "local", "claude-3-5-haiku-20241022"),
    ("claude-haiku-4-5", "local", "claude-haiku-4-5"),
    ("claude-opus-4-8", "demo", "claude-opus-4-8"),
    ("local/qwen3-coder", "local", "qwen3-coder"),
    ("demo/big", "demo", "big"),
])
def test_resolution_order(catalog: ModelCatalog, name: str, provider: str,
                          upstream: str) -> None:
    route = catalog.resolve(name)
    assert route is not None
    assert (route.requested, route.provider, route.upstream_model) == (name, provider, upstream)


def test_unknown_names(catalog: ModelCatalog) -> None:
    assert catalog.resolve("gpt-4o") is None
    assert catalog.resolve("nowhere/model") is None
    err = catalog.unknown_model("gpt-4o")
    assert err.status == 404 and "claude-sonnet-4-6" in err.message and "claude-*" in err.message


def test_listing_skips_unlisted(catalog: ModelCatalog) -> None:
    assert [m["id"] for m in catalog.listed()] == ["claude-sonnet-4-6", "fast"]
    assert catalog.get("sonnet")["id"] == "claude-sonnet-4-6"  # type: ignore[index]


def test_auth_stage_accepts_both_headers_and_names_the_client() -> None:
    stage = AuthStage({"alice": bytes.fromhex(hash_key("k1")),
                       "bob": bytes.fromhex(hash_key("k2"))})
    for headers in ({"x-api-key": "k2"}, {"authorization": "Bearer k2"},
                    {"x-api-key": "k2", "authorization": "Bearer nope"}):
        exchange = make_exchange(headers=headers)
        result = run_stage(stage, exchange)
        assert result.error is None and exchange.client == "bob"
        assert len(result.calls) == 1


@pytest.mark.parametrize("headers, fragment", [
    ({}, "missing API key"),
    ({"x-api-key": "wrong"}, "invalid x-api-key"),
    ({"authorization": "Basic abc"}, "missing API key"),
    ({"authorization": "Bearer wrong"}, "invalid Authorization: Bearer token"),  # 7.13
])
def test_auth_stage_rejects(headers: dict[str, str], fragment: str) -> None:
    stage = AuthStage({"alice": bytes.fromhex(hash_key("k1"))})
    result = run_stage(stage, make_exchange(headers=headers))
    assert result.error is not None and result.error.status == 401
    assert fragment in result.error.message and result.calls == []
    if "authorization" in headers:
        assert "x-api-key" not in result.error.message.replace("missing API key: send it in "
                                                                "the x-api-key header", "")


def test_presented_key_prefers_x_api_key() -> None:  # R-X1
    assert presented_key({"x-api-key": "a", "authorization": "Bearer b"}) == "a"
    assert presented_key({"authorization": "bearer   b  "}) == "b"


def test_model_map_routes_and_default(catalog: ModelCatalog) -> None:
    exchange = make_exchange({"model": "sonnet"})
    run_stage(ModelMapStage(catalog), exchange)
    assert exchange.route is not None and exchange.route.upstream_model == "big"
    missing = run_stage(ModelMapStage(catalog), {"model": "gpt-4o"})
    assert missing.error is not None and missing.error.status == 404
    fallback = make_exchange({"model": "gpt-4o"})
    run_stage(ModelMapStage(catalog, default="fast"), fallback)
    assert fallback.route is not None
    assert (fallback.route.requested, fallback.route.provider) == ("gpt-4o", "local")


def test_build_stage_from_plugins() -> None:
    stage = build_stage("model-map", {"default": "test-model"})
    assert isinstance(stage, ModelMapStage)
    with pytest.raises(ConfigError, match="unknown key"):
        build_stage("model-map", {"defualt": "x"})
    with pytest.raises(ValueError, match="no model named"):
        build_stage("model-map", {"default": "missing"}, config=CONFIG)


def test_run_stage_checks_grammar_of_filters() -> None:
    class Broken:
        async def __call__(self, exchange, proceed):  # type: ignore[no-untyped-def]
            reply: Reply = await proceed(exchange)
            assert reply.stream is not None

            class DropStops:
                def feed(self, e):  # type: ignore[no-untyped-def]
                    return [] if e["type"] == "content_block_stop" else [e]

                def finish(self):  # type: ignore[no-untyped-def]
                    return []

            reply.stream = reply.stream.through(DropStops())
            return reply

    from txrelay.protocol.events import GrammarError

    with pytest.raises(GrammarError):
        run_stage(Broken(), reply=text_reply("x"))


def test_tool_reply_helper() -> None:
    async def passthrough(exchange, proceed):  # type: ignore[no-untyped-def]
        return await proceed(exchange)

    result = run_stage(passthrough, reply=tool_reply("Read", {"path": "a.py"}))
    assert result.message is not None
    assert result.message["content"][0]["input"] == {"path": "a.py"}
    assert result.message["stop_reason"] == "tool_use"
