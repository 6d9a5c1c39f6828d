"""The per-model capability table: config, presets, refusals, mappings, the models API."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from anthropic.types import ModelInfo

from txrelay.capabilities import (
    Capabilities,
    CapabilityTable,
    apply_capabilities,
    capabilities_of,
    preset_for,
    resolve,
)
from txrelay.catalog import ModelCatalog, Route
from txrelay.config import ConfigError, parse_config
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.anthropic import MessagesRequest, request_from_json
from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import loads
from txrelay.protocol.openai.dialect import PRESETS as DIALECTS
from txrelay.stages.translate import TranslateStage
from txrelay.testing import make_exchange, run_stage
from txrelay.upstream.openai import OpenAIChatCodec

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}


def config(capabilities: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"id": "deepseek-chat", "provider": "p", **model}
    if capabilities is not None:
        m["capabilities"] = capabilities
    return {"providers": [{"name": "p", "kind": "demo"}], "models": [m],
            "pipeline": [{"type": "translate"}]}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return info.value.problems


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "hi"}], **fields}
    return request_from_json(body)


def refusal(caps: Capabilities, **fields: Any) -> str:
    with pytest.raises(RelayError) as info:
        apply_capabilities(request(**fields), caps, model="deepseek-chat")
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value.message


# --- config ---------------------------------------------------------------------------------


def test_defaults_refuse_and_rewrite_nothing() -> None:
    cfg = parse_config(config(id="my-model"), env={})
    assert cfg.models[0].capabilities == CapabilityTable()
    req = request(messages=[{"role": "user", "content": [{"type": "image", "source": PNG}]}],
                  tools=[{"name": "t", "input_schema": {"type": "object"}}],
                  thinking={"type": "enabled", "budget_tokens": 2000}, max_tokens=64000)
    assert apply_capabilities(req, resolve(CapabilityTable(), "my-model"), model="x") is req


def test_unknown_keys_and_bad_values_are_reported_with_their_paths() -> None:
    found = problems(config({"visoin": False, "thinking": "sometimes", "tools": "no"}))
    text = "\n".join(found)
    assert "models[0].capabilities" in text and "visoin" in text
    assert "models[0].capabilities.thinking" in text and "sometimes" in text
    assert "models[0].capabilities.tools: expected a boolean, got a string" in text


def test_checks_after_structuring() -> None:
    found = problems(config({"preset": "gpt-9", "max_output_tokens": 0, "context_window": 0}))
    assert found[0].startswith("models[0].capabilities.preset: unknown preset 'gpt-9' "
                               "(one of auto, none, deepseek,")
    assert "models[0].capabilities.max_output_tokens: must be at least 1" in found
    assert "models[0].capabilities.context_window: must be at least 1" in found


def test_old_limit_keys_are_the_same_limits() -> None:
    found = problems(config({"max_output_tokens": 4096}, max_tokens=8192))
    assert found == ["models[0].capabilities.max_output_tokens: 4096 differs from the "
                     "model's max_tokens (8192); they are the same limit, give one"]
    cfg = parse_config(config({"max_output_tokens": 8192, "context_window": 65536},
                              max_tokens=8192), env={})
    caps = capabilities_of(Route("deepseek-chat", "p", "deepseek-chat", cfg.models[0]))
    assert (caps.max_output_tokens, caps.context_window) == (8192, 65536)
    cfg = parse_config(config(max_tokens=100, max_input_tokens=1000), env={})
    caps = capabilities_of(Route("x", "p", "deepseek-chat", cfg.models[0]))
    assert (caps.max_output_tokens, caps.context_window) == (100, 1000)


def test_presets_by_upstream_glob_and_their_overrides() -> None:
    assert preset_for("deepseek-chat").name == "deepseek"  # type: ignore[union-attr]
    assert preset_for("deepseek/deepseek-chat").name == "deepseek"  # type: ignore[union-attr]
    assert preset_for("GPT-5.1").name == "openai-reasoning"  # type: ignore[union-attr]
    assert preset_for("gemini-2.0-flash").name == "gemini-2.0"  # type: ignore[union-attr]
    assert preset_for("gemini-2.5-pro") is None  # the gemini codec maps thinking itself
    assert preset_for("qwen3-coder") is None
    deepseek = resolve(CapabilityTable(), "deepseek-chat")
    assert (deepseek.vision, deepseek.documents, deepseek.thinking) == (False, False, "effort")
    assert resolve(CapabilityTable(vision=True), "deepseek-chat").vision is True
    assert resolve(CapabilityTable(preset="none"), "deepseek-chat") == Capabilities()
    named = resolve(CapabilityTable(preset="gemini-2.0"), "my-gemini")
    assert named.thinking == "none"
    assert named.reasoning_passback is False  # a model that does not think is sent none
    assert resolve(CapabilityTable(preset="gemini-2.0", reasoning_passback=True),
                   "g").reasoning_passback is True


def test_routes_without_a_model_entry_get_their_preset() -> None:
    assert capabilities_of(Route("deepseek/deepseek-chat", "deepseek", "deepseek-chat",
                                 None)).vision is False
    # A pattern model's upstream is the asked name: the preset follows it.
    cfg = parse_config(config(id="any", patterns=["*"]), env={})
    assert capabilities_of(Route("deepseek-r", "p", "deepseek-r", cfg.models[0])).vision is False
    assert capabilities_of(Route("qwen", "p", "qwen", cfg.models[0])).vision is True


# --- refusals -------------------------------------------------------------------------------


def test_images_are_refused_naming_model_capability_and_path() -> None:
    no_vision = Capabilities(vision=False)
    msg = refusal(no_vision, messages=[
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image", "source": PNG},
                                     {"type": "text", "text": "what is it?"}]}])
    assert msg == "model 'deepseek-chat' does not accept images (messages.2.content.0)"


def test_nested_images_and_counts() -> None:
    no_vision = Capabilities(vision=False)
    msg = refusal(no_vision, messages=[
        {"role": "user", "content": [{"type": "text", "text": "run it"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "see"}, {"type": "image", "source": PNG}]},
            {"type": "document", "source": {"type": "content", "content": [
                {"type": "image", "source": PNG}]}}]}])
    assert msg == ("model 'deepseek-chat' does not accept images "
                   "(messages.2.content.0.content.1 and 1 more)")


def test_pdfs_are_refused_but_text_documents_pass() -> None:
    no_pdf = Capabilities(documents=False)
    msg = refusal(no_pdf, messages=[{"role": "user", "content": [
        {"type": "document", "source": PDF}]}])
    assert msg == "model 'deepseek-chat' does not accept PDF documents (messages.0.content.0)"
    text_doc = request(messages=[{"role": "user", "content": [{"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": "plain"}}]}])
    assert apply_capabilities(text_doc, no_pdf, model="m") is text_doc


def test_tools_are_refused() -> None:
    msg = refusal(Capabilities(tools=False),
                  tools=[{"name": "Read", "input_schema": {"type": "object"}}])
    assert msg == "model 'deepseek-chat' does not accept tools (tools)"
    plain = request(tools=[])
    assert apply_capabilities(plain, Capabilities(tools=False), model="m") is plain


def test_the_serving_model_is_named_when_it_differs() -> None:
    with pytest.raises(RelayError) as info:
        apply_capabilities(request(tools=[{"name": "t", "input_schema": {}}]),
                           Capabilities(tools=False), model="claude-sonnet-4-6",
                           upstream_model="deepseek-chat")
    assert info.value.message == ("model 'claude-sonnet-4-6' (served by 'deepseek-chat') "
                                  "does not accept tools (tools)")


# --- output limit ---------------------------------------------------------------------------


def test_max_tokens_is_clamped_by_default() -> None:
    caps = Capabilities(max_output_tokens=8192)
    assert apply_capabilities(request(max_tokens=64000), caps, model="m").max_tokens == 8192
    small = request(max_tokens=100)
    assert apply_capabilities(small, caps, model="m") is small


def test_max_tokens_is_refused_like_the_real_api_when_asked() -> None:
    msg = refusal(Capabilities(max_output_tokens=8192, clamp_max_tokens=False),
                  max_tokens=64000)
    assert msg == ("max_tokens: 64000 > 8192, which is the maximum allowed number of output "
                   "tokens for deepseek-chat")


def test_a_clamped_max_tokens_keeps_the_thinking_budget_below_it() -> None:
    caps = Capabilities(max_output_tokens=8192)
    out = apply_capabilities(request(max_tokens=32000, thinking={
        "type": "enabled", "budget_tokens": 31999}), caps, model="m")
    assert (out.max_tokens, out.thinking) == (8192, {"type": "enabled", "budget_tokens": 8191})
    tiny = apply_capabilities(request(max_tokens=32000, thinking={
        "type": "enabled", "budget_tokens": 31999}), Capabilities(max_output_tokens=512),
        model="m")
    assert tiny.thinking == {"type": "disabled"}


# --- thinking styles ------------------------------------------------------------------------


@pytest.mark.parametrize("style, thinking, effort, want_thinking, want_effort", [
    ("none", {"type": "adaptive"}, "high", None, None),
    ("none", {"type": "enabled", "budget_tokens": 2000}, None, None, None),
    ("budget", {"type": "adaptive"}, "low", {"type": "enabled", "budget_tokens": 1024}, None),
    ("budget", {"type": "adaptive", "display": "omitted"}, None,
     {"type": "enabled", "budget_tokens": 24576, "display": "omitted"}, None),
    ("budget", {"type": "disabled"}, "high", {"type": "disabled"}, None),
    ("budget", {"type": "between_tools"}, "high", {"type": "disabled"}, None),
    ("adaptive", {"type": "enabled", "budget_tokens": 2000}, None, {"type": "adaptive"}, "low"),
    ("adaptive", {"type": "enabled", "budget_tokens": 9000}, "max", {"type": "adaptive"},
     "max"),
    ("effort", {"type": "enabled", "budget_tokens": 20000}, None,
     {"type": "enabled", "budget_tokens": 20000}, "high"),
    ("effort", {"type": "adaptive"}, "medium", {"type": "adaptive"}, "medium"),
    ("any", {"type": "adaptive"}, "high", {"type": "adaptive"}, "high"),
])
def test_thinking_maps_to_the_style(style: Any, thinking: dict[str, Any], effort: str | None,
                                    want_thinking: Any, want_effort: str | None) -> None:
    fields: dict[str, Any] = {"thinking": thinking, "max_tokens": 32000}
    if effort is not None:
        fields["output_config"] = {"effort": effort}
    out = apply_capabilities(request(**fields), Capabilities(thinking=style), model="m")
    assert out.thinking == want_thinking
    assert (out.output_config or {}).get("effort") == want_effort


def test_thinking_none_keeps_the_rest_of_output_config() -> None:
    fmt = {"type": "json_schema", "schema": {"type": "object"}}
    out = apply_capabilities(request(output_config={"effort": "high", "format": fmt}),
                             Capabilities(thinking="none"), model="m")
    assert out.output_config == {"format": fmt}


# --- cache_control --------------------------------------------------------------------------


def test_cache_control_hints_are_removed_when_the_model_takes_none() -> None:
    cc = {"type": "ephemeral"}
    req = request(
        system=[{"type": "text", "text": "sys", "cache_control": cc}],
        messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "cache_control": cc,
             "content": [{"type": "text", "text": "r", "cache_control": cc}]},
            {"type": "text", "text": "hi", "cache_control": cc}]}],
        tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": cc}],
        cache_control=cc)
    out = apply_capabilities(req, Capabilities(cache_control=False), model="m")
    assert "cache_control" not in repr(attrs.asdict(out))
    assert out.messages[0].content[1] == {"type": "text", "text": "hi"}  # type: ignore[index]
    assert "cache_control" in repr(attrs.asdict(req))  # the client's request is not changed
    assert apply_capabilities(req, Capabilities(), model="m") is req


# --- the translate stage ----------------------------------------------------------------------


@attrs.define
class RecordingBackend:
    """A backend that records what reached it."""

    seen: list[Exchange] = attrs.Factory(list)

    async def messages(self, exchange: Exchange) -> Reply:
        self.seen.append(exchange)
        return Reply.json({"ok": True})

    async def count_tokens(self, exchange: Exchange) -> int:
        self.seen.append(exchange)
        return 7


def _routed(body: dict[str, Any], caps: dict[str, Any], operation: Any = "messages"
            ) -> Exchange:
    cfg = parse_config(config(caps, max_tokens=None), env={})
    route = ModelCatalog.from_config(cfg).resolve("deepseek-chat")
    return make_exchange({"model": "deepseek-chat", **body}, operation=operation, route=route)


@pytest.mark.parametrize("operation", ["messages", "count_tokens"])
def test_translate_refuses_before_the_backend_is_called(operation: Any) -> None:
    backend = RecordingBackend()
    image = {"messages": [{"role": "user", "content": [{"type": "image", "source": PNG}]}]}
    result = run_stage(TranslateStage({"p": backend}), _routed(image, {}, operation))
    assert result.error is not None and result.error.status == 400
    assert result.error.message == ("model 'deepseek-chat' does not accept images "
                                    "(messages.0.content.0)")
    assert backend.seen == []


def test_translate_sends_the_mapped_body_and_leaves_an_untouched_one_alone() -> None:
    backend = RecordingBackend()
    stage = TranslateStage({"p": backend})
    run_stage(stage, _routed({"max_tokens": 64000}, {"max_output_tokens": 8192}))
    sent = backend.seen[-1]
    assert loads(sent.raw_body)["max_tokens"] == 8192 and sent.body_replaced
    run_stage(stage, _routed({"max_tokens": 100}, {"max_output_tokens": 8192}))
    assert not backend.seen[-1].body_replaced


# --- backends' use of the table ---------------------------------------------------------------


def test_openai_codec_drops_reasoning_passback_when_told() -> None:
    history = request(max_tokens=100, messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "let me think", "signature": "txr1.oai.x"},
            {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "done"}]}])
    codec = OpenAIChatCodec("deepseek", DIALECTS["deepseek"])
    for passback, want in ((True, "let me think"), (False, "")):
        cfg = parse_config(config({"reasoning_passback": passback}), env={})
        route = Route("deepseek-chat", "p", "deepseek-chat", cfg.models[0])
        body = loads(codec.prepare(history, route, 10).request.body)
        assistant = body["messages"][1]
        assert assistant["reasoning_content"] == want  # DeepSeek still gets its empty field


def test_openai_codec_clamps_to_the_resolved_context_window() -> None:
    cfg = parse_config(config({"context_window": 1000}), env={})
    route = Route("deepseek-chat", "p", "deepseek-chat", cfg.models[0])
    codec = OpenAIChatCodec("p", DIALECTS["generic"])
    body = loads(codec.prepare(request(max_tokens=900), route, 300).request.body)
    assert body["max_tokens"] == 700


# --- the models API ---------------------------------------------------------------------------


def test_model_objects_reflect_the_table_and_satisfy_the_sdk() -> None:
    cfg = parse_config(config({"max_output_tokens": 8192, "context_window": 131072}), env={})
    obj = ModelCatalog.from_config(cfg).listed()[0]
    assert (obj["max_tokens"], obj["max_input_tokens"]) == (8192, 131072)
    caps = obj["capabilities"]
    assert caps["image_input"] == {"supported": False}
    assert caps["pdf_input"] == {"supported": False}
    assert caps["thinking"]["supported"] is True
    info = ModelInfo.model_validate(obj)  # strict validation, not the SDK's lenient construct
    assert info.capabilities is not None and info.capabilities.image_input.supported is False
    plain = parse_config(config({"preset": "none", "thinking": "none"}, id="local"), env={})
    caps = ModelCatalog.from_config(plain).listed()[0]["capabilities"]
    assert caps["image_input"] == {"supported": True}
    assert caps["thinking"]["supported"] is False and caps["effort"]["supported"] is False


def test_provider_prefixed_names_get_their_presets_capabilities() -> None:
    cfg = parse_config(config(), env={})
    obj = ModelCatalog.from_config(cfg).get("p/deepseek-reasoner")
    assert obj is not None and obj["capabilities"]["image_input"] == {"supported": False}
    ModelInfo.model_validate(obj)


def test_resolve_is_cached_and_shares_its_immutable_result() -> None:
    """A request resolves its model's capabilities several times: once per table is enough."""
    table = CapabilityTable(vision=False)
    first = resolve(table, "deepseek-chat", max_tokens=100)
    assert resolve(CapabilityTable(vision=False), "deepseek-chat", max_tokens=100) is first
    assert resolve(table, "deepseek-chat", max_tokens=200) is not first
    assert first.max_output_tokens == 100 and first.vision is False
