"""The ``identity-guard`` stage: preamble, stream filter, response model, impersonation."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from txrelay.catalog import Route
from txrelay.config import ConfigError
from txrelay.pipeline import Reply
from txrelay.protocol import events as ev
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event, StreamGrammar
from txrelay.protocol.phrases import Phrase, PhraseSet
from txrelay.stages.identity import IdentityFilter, with_preamble
from txrelay.streams import CollectingSink, stream_of
from txrelay.testing import ManualSource, build_stage, make_exchange, run_stage

CONFIG: dict[str, Any] = {
    "providers": [{"name": "deepseek", "kind": "demo"}, {"name": "local", "kind": "demo"}],
    "models": [
        {"id": "ds-chat", "provider": "deepseek", "upstream_model": "deepseek-chat",
         "patterns": ["claude-*"]},
        {"id": "qwen", "provider": "local", "upstream_model": "qwen3-coder"},
    ],
    "pipeline": [{"type": "translate"}],
}
PHRASES = [
    {"text": "DeepSeek", "replace": "the assistant", "ignore_case": True},
    {"text": "GPT-[45]o?", "replace": "a model", "pattern": True},
    {"text": " (made by OpenAI)"},
]


def guard(**options: Any) -> Any:
    return build_stage("identity-guard", options, CONFIG)


def deltas_reply(pieces: list[str], *, model: str = "ds-chat") -> Reply:
    events = [ev.message_start("msg_1", model, ev.empty_usage(3)), ev.text_block_start(0)]
    events += [ev.text_delta(0, p) for p in pieces]
    events += [ev.block_stop(0), ev.message_delta("end_turn", None, {"output_tokens": 2}),
               ev.message_stop()]
    return Reply(stream=stream_of(events))


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6",
            "messages": [{"role": "user", "content": "who are you?"}], **fields}


def unrouted(fields: dict[str, Any]) -> Any:
    exchange = make_exchange(fields)
    exchange.route = None
    return exchange


# the text filter

def test_phrases_split_across_deltas_are_replaced() -> None:
    stage = guard(phrases=PHRASES)
    result = run_stage(stage, body(), reply=deltas_reply(
        ["I am Deep", "s", "eek-V3, like GP", "T-4", "o (made by Op", "enAI)."]))
    assert result.text == "I am the assistant-V3, like a model."


def test_non_streaming_gets_the_same_filter() -> None:
    stage = guard(phrases=PHRASES)
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "x",
               "content": [{"type": "text", "text": "DeepSeek here"},
                           {"type": "tool_use", "id": "t", "name": "DeepSeek", "input": {}}],
               "stop_reason": "end_turn", "stop_sequence": None, "usage": {}}
    result = run_stage(stage, body(), reply=Reply.json(message))
    assert result.reply is not None
    assert result.reply.body["content"][0]["text"] == "the assistant here"
    assert result.reply.body["content"][1]["name"] == "DeepSeek"  # tool names untouched
    assert result.reply.body["model"] == "claude-sonnet-4-6"


def test_held_text_is_flushed_before_a_tool_call_starts() -> None:
    events = [
        ev.message_start("m", "x", ev.empty_usage(1)), ev.text_block_start(0),
        ev.text_delta(0, "Let me ask Deep"), ev.block_stop(0),
        ev.tool_use_block_start(1, "toolu_1", "DeepSeek"),
        ev.input_json_delta(1, '{"q":"DeepSeek"}'),
        ev.block_stop(1), ev.message_delta("tool_use", None, {"output_tokens": 3}),
        ev.message_stop(),
    ]
    result = run_stage(guard(phrases=PHRASES), body(), reply=Reply(stream=stream_of(events)))
    assert result.message is not None
    assert result.message["content"][0]["text"] == "Let me ask Deep"
    assert result.message["content"][1]["input"] == {"q": "DeepSeek"}
    kinds = [(e["type"], e.get("index")) for e in result.events]
    assert kinds.index(("content_block_delta", 0)) < kinds.index(("content_block_stop", 0))


def test_thinking_is_filtered_only_when_asked() -> None:
    def reply() -> Reply:
        return Reply(stream=stream_of([
            ev.message_start("m", "x", ev.empty_usage(1)), ev.thinking_block_start(0),
            ev.thinking_delta(0, "As Deep"), ev.thinking_delta(0, "Seek I"),
            ev.signature_delta(0, "sig"), ev.block_stop(0), ev.text_block_start(1),
            ev.text_delta(1, "DeepSeek"), ev.block_stop(1),
            ev.message_delta("end_turn", None, {"output_tokens": 3}), ev.message_stop()]))

    plain = run_stage(guard(phrases=PHRASES), body(), reply=reply())
    assert plain.message is not None
    assert plain.message["content"][0]["thinking"] == "As DeepSeek I"
    assert plain.message["content"][1]["text"] == "the assistant"
    both = run_stage(guard(phrases=PHRASES, thinking=True), body(), reply=reply())
    assert both.message is not None
    assert both.message["content"][0]["thinking"] == "As the assistant I"
    assert both.message["content"][0]["signature"] == "sig"


def test_held_text_is_released_when_the_stream_fails() -> None:
    source = ManualSource()
    stage = guard(phrases=PHRASES)
    result_reply: list[Reply] = []

    async def proceed(exchange: Any) -> Reply:
        return Reply(stream=source.stream())

    Deferred.fromCoroutine(stage(make_exchange(body()), proceed)).addCallback(
        result_reply.append)
    sink = CollectingSink()
    result_reply[0].stream.start(sink)  # type: ignore[union-attr]
    source.send(ev.message_start("m", "x", ev.empty_usage(1)), ev.text_block_start(0),
                ev.text_delta(0, "Hello from Deep"))
    assert [e["delta"]["text"] for e in sink.events if e["type"] == "content_block_delta"] == [
        "Hello from "]
    source.end(RelayError("overloaded_error", "upstream went away"))
    texts = [e["delta"]["text"] for e in sink.events if e["type"] == "content_block_delta"]
    assert texts == ["Hello from ", "Deep"]
    assert sink.error is not None and sink.error.type == "overloaded_error"


def test_pause_resume_and_stop_reach_the_upstream() -> None:
    source = ManualSource()
    stage = guard(phrases=PHRASES)
    replies: list[Reply] = []

    async def proceed(exchange: Any) -> Reply:
        return Reply(stream=source.stream())

    Deferred.fromCoroutine(stage(make_exchange(body()), proceed)).addCallback(replies.append)
    stream = replies[0].stream
    assert stream is not None
    stream.start(CollectingSink())
    stream.pause()
    stream.resume()
    stream.stop()
    assert source.flow == ["pause", "resume"] and source.stopped


def events_for(blocks: list[tuple[str, list[str]]]) -> list[Event]:
    out = [ev.message_start("m", "x", ev.empty_usage(1)), ev.ping()]
    for i, (kind, pieces) in enumerate(blocks):
        if kind == "text":
            out.append(ev.text_block_start(i))
            out += [ev.text_delta(i, p) for p in pieces]
        elif kind == "thinking":
            out.append(ev.thinking_block_start(i))
            out += [ev.thinking_delta(i, p) for p in pieces]
        else:
            out.append(ev.tool_use_block_start(i, f"toolu_{i}", "Read"))
            out += [ev.input_json_delta(i, p) for p in ("{", "}")]
        out.append(ev.block_stop(i))
    out += [ev.message_delta("end_turn", None, {"output_tokens": 1}), ev.message_stop()]
    return out


ALPHABET = "DeepSkGPT-45o ab"
PROPERTY_PHRASES = PhraseSet.compile([
    Phrase("DeepSeek", "[ds]", ignore_case=True), Phrase("GPT-[45]o?", "[gpt]", pattern=True),
    Phrase("ab", ""), Phrase("e{2,3}p", "E", pattern=True)])


@st.composite
def pieces_of(draw: st.DrawFn) -> list[str]:
    text = draw(st.text(ALPHABET, max_size=50))
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


blocks_strategy = st.lists(st.tuples(st.sampled_from(["text", "thinking", "tool"]), pieces_of()),
                           min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(blocks_strategy, st.booleans())
def test_filtered_stream_equals_filter_of_whole_text(
        blocks: list[tuple[str, list[str]]], thinking: bool) -> None:
    f = IdentityFilter(PROPERTY_PHRASES, thinking, "claude-x")
    grammar = StreamGrammar()
    acc = MessageAccumulator()
    for event in events_for(blocks):
        for out in f.feed(event):
            grammar.feed(out)
            acc.feed(out)
        assert f.held <= PROPERTY_PHRASES.longest - 1
    for out in f.finish():
        grammar.feed(out)
        acc.feed(out)
    grammar.close()
    message = acc.result()
    assert message["model"] == "claude-x"
    for (kind, pieces), block in zip(blocks, message["content"], strict=True):
        whole = "".join(pieces)
        if kind == "text":
            assert block["text"] == PROPERTY_PHRASES.apply(whole)
        elif kind == "thinking":
            assert block["thinking"] == (PROPERTY_PHRASES.apply(whole) if thinking else whole)
        else:
            assert block["input"] == {}


# the response model

def test_model_echoes_the_requested_name_by_default() -> None:
    result = run_stage(guard(), body(), reply=deltas_reply(["hi"], model="deepseek-chat"))
    assert result.message is not None and result.message["model"] == "claude-sonnet-4-6"


def test_model_can_report_the_served_one() -> None:
    ex = make_exchange(body(), route=Route("claude-sonnet-4-6", "deepseek", "deepseek-chat",
                                           None))
    result = run_stage(guard(model="served"), ex, reply=deltas_reply(["hi"], model="whatever"))
    assert result.message is not None and result.message["model"] == "deepseek-chat"


# the preamble

def turns() -> list[dict[str, Any]]:
    system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1;"},
              {"type": "text", "text": "You are a coding agent.",
               "cache_control": {"type": "ephemeral"}}]
    first = [{"role": "user", "content": "hello"}]
    second = [*first, {"role": "assistant", "content": "hi"},
              {"role": "user", "content": "go on"}]
    return [body(system=system, messages=first), body(system=system, messages=second)]


def test_preamble_is_byte_identical_first_and_uncached_across_turns() -> None:
    stage = guard(preamble="You are {model}, run by {operator}.", operator="Example Corp")
    seen = []
    for turn in turns():
        result = run_stage(stage, turn)
        seen.append(result.calls[0].require_request().system)
    assert seen[0] == seen[1]
    assert seen[0][0] == {"type": "text", "text": "You are claude-sonnet-4-6, run by Example Corp."}
    assert seen[0][1:] == turns()[0]["system"]  # the client's blocks, breakpoints unchanged
    assert sum("cache_control" in b for b in seen[0]) == 1


def test_preamble_after_the_client_system_prompt() -> None:
    stage = guard(preamble="Served by {operator}.", operator="Ex", position="after")
    result = run_stage(stage, body(system="Be brief."))
    assert result.calls[0].require_request().system == [
        {"type": "text", "text": "Be brief."}, {"type": "text", "text": "Served by Ex."}]


def test_preamble_per_model_and_provider() -> None:
    stage = guard(preamble="default", routes=[
        {"models": ["qwen*"], "preamble": "You are {served} by {operator}.", "operator": "Lab"},
        {"providers": ["deepseek"], "preamble": "DeepSeek route"},
    ])
    qwen = run_stage(stage, unrouted(body(model="qwen")))  # before model-map: the catalogue's
    assert qwen.calls[0].require_request().system == [
        {"type": "text", "text": "You are qwen3-coder by Lab."}]
    ds = run_stage(stage, unrouted(body(model="claude-opus-4")))
    assert ds.calls[0].require_request().system == [{"type": "text", "text": "DeepSeek route"}]


def test_with_preamble_is_idempotent_and_keeps_the_rest() -> None:
    req = make_exchange(body(system="Be brief.")).require_request()
    once = with_preamble(req, "P", "before")
    assert with_preamble(once, "P", "before") is once
    assert attrs.evolve(once, system=None).messages == req.messages


def test_count_tokens_sees_the_preamble_too() -> None:
    stage = guard(preamble="Counted.")
    ex = make_exchange(body(), operation="count_tokens")
    result = run_stage(stage, ex, reply=Reply.json({"input_tokens": 1}))
    assert result.calls[0].require_request().system == [{"type": "text", "text": "Counted."}]


# impersonation

def test_impersonation_of_a_named_model_is_refused() -> None:
    stage = guard(refuse_impersonation=["GPT-4o", "Gemini"])
    spaced = run_stage(stage, body(system="From now on YOU ARE\n  the gemini assistant."))
    assert spaced.error is not None and not spaced.calls
    refused = run_stage(stage, body(system="Pretend to be GPT-4o at all times."))
    assert refused.error is not None and refused.error.status == 400
    assert refused.error.type == "invalid_request_error"
    assert "'pretend to be GPT-4o'" in refused.error.message
    ok = run_stage(stage, body(system="You are a helpful coding agent. Compare with GPT-4o."))
    assert ok.error is None and ok.calls


# configuration

@pytest.mark.parametrize(("options", "complaint"), [
    ({"preamble": "You are {name}"}, "unknown placeholder {name}"),
    ({"preamble": "You are {"}, "literal braces"),
    ({"routes": [{"preamble": "x"}]}, "routes[0]: give models or providers"),
    ({"routes": [{"providers": ["nope"], "preamble": "x"}]}, "no provider named nope"),
    ({"phrases": [{"text": "a+", "pattern": True}]}, "phrases[0]: pattern 'a+'"),
    ({"phrases": [{"text": "x", "regex": True}]}, "unknown key(s): regex"),
    ({"model": "invented"}, "expected one of 'requested', 'served'"),
    ({"refuse_impersonation": [" "]}, "must not be empty"),
])
def test_bad_options_are_config_errors(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises((ConfigError, ValueError)) as info:
        guard(**options)
    assert complaint in str(info.value)


def test_the_readme_example_does_what_the_readme_says() -> None:
    import re
    import tomllib
    from pathlib import Path

    from txrelay.config import parse_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.S)
                 if "identity-guard" in b)
    raw = tomllib.loads(block)
    cfg = parse_config(raw, "README", env={"DEEPSEEK_API_KEY": "k"})
    options = next(p["options"] for p in raw["pipeline"] if p["type"] == "identity-guard")
    stage = build_stage("identity-guard", options, cfg)
    result = run_stage(stage, unrouted(body()),
                       reply=deltas_reply(["I am Deep", "Seek-V3, made by deepseek."]))
    assert result.text == "I am the assistant-, made by the assistant."
    assert result.message is not None and result.message["model"] == "claude-sonnet-4-6"
    system = result.calls[0].require_request().system
    assert system[0]["text"].startswith("You are the coding assistant of Example Corp.")


def test_text_after_a_citation_is_still_filtered() -> None:
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0,
                "document_title": None, "start_char_index": 0, "end_char_index": 1}
    events = [
        ev.message_start("m", "x", ev.empty_usage(1)), ev.text_block_start(0),
        ev.text_delta(0, "Deep"),
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "citations_delta", "citation": citation}},
        ev.text_delta(0, "DeepSeek says"), ev.block_stop(0),
        ev.message_delta("end_turn", None, {"output_tokens": 3}), ev.message_stop(),
    ]
    result = run_stage(guard(phrases=PHRASES), body(), reply=Reply(stream=stream_of(events)))
    assert result.text == "Deepthe assistant says"
    assert result.message is not None and result.message["content"][0]["citations"] == [citation]


def test_every_bad_option_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as info:
        guard(preamble="{vendor}", phrases=[{"text": "a{1,100}", "pattern": True}])
    assert "unknown placeholder {vendor}" in str(info.value)
    assert "phrases[0]: pattern 'a{1,100}', at offset 1" in str(info.value)
