"""The tool-hygiene stage in the pipeline, in memory (txrelay.testing)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.protocol.toolcalls.helpers import READ, render, text_stream
from txrelay.config import ConfigError
from txrelay.pipeline import Reply
from txrelay.protocol import events as ev
from txrelay.protocol.toolcalls.ids import derived_id
from txrelay.stages.toolhygiene import ToolHygieneOptions, ToolHygieneStage
from txrelay.streams import CollectingSink, stream_of
from txrelay.testing import ManualSource, build_stage, make_exchange, run_stage, tool_reply

CALL = render("hermes", "Read", {"path": "/etc/hosts"})
BODY: dict[str, Any] = {"tools": [READ], "messages": [{"role": "user", "content": "read it"}]}


def reply_text(*deltas: str) -> Reply:
    return Reply(stream=stream_of(text_stream(list(deltas))))


def test_a_hermes_call_in_text_becomes_a_tool_use_block() -> None:
    result = run_stage(ToolHygieneStage(), BODY,
                       reply=reply_text("I will read it.\n", CALL[:9], CALL[9:30], CALL[30:]))
    assert result.message is not None
    content = result.message["content"]
    assert content[0] == {"type": "text", "text": "I will read it.\n"}
    assert content[1] == {"type": "tool_use", "id": derived_id(1, 1), "name": "Read",
                          "input": {"path": "/etc/hosts"}}
    assert len(content) == 2 and result.message["stop_reason"] == "tool_use"
    assert not result.calls[0].body_replaced  # a sound history goes up byte for byte


def test_blocks_after_a_split_text_block_are_renumbered() -> None:
    events = [ev.message_start("m", "m", ev.empty_usage()), ev.thinking_block_start(0),
              ev.thinking_delta(0, "hm"), ev.block_stop(0), ev.text_block_start(1),
              ev.text_delta(1, "a " + CALL + " b"), ev.block_stop(1),
              ev.tool_use_block_start(2, "call.9", "Read"), ev.input_json_delta(2, "{}"),
              ev.block_stop(2), ev.message_delta("tool_use", None, {"output_tokens": 1}),
              ev.message_stop()]
    result = run_stage(ToolHygieneStage(), BODY, reply=Reply(stream=stream_of(events)))
    assert result.message is not None
    kinds = [b["type"] for b in result.message["content"]]
    assert kinds == ["thinking", "text", "tool_use", "text", "tool_use"]
    assert result.message["content"][4]["id"] == derived_id(1, 4, "call.9")


def test_response_ids_that_repeat_the_history_are_replaced() -> None:
    body = {"tools": [READ], "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_same",
                                           "name": "Read", "input": {"path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_same",
                                      "content": "x"}]}]}
    result = run_stage(ToolHygieneStage(), body,
                       reply=tool_reply("Read", {"path": "b"}, tool_id="toolu_same"))
    assert result.message is not None
    assert result.message["content"][0]["id"] == derived_id(3, 0, "toolu_same")
    kept = run_stage(ToolHygieneStage(), BODY,
                     reply=tool_reply("Read", {"path": "b"}, tool_id="toolu_fine"))
    assert kept.message is not None and kept.message["content"][0]["id"] == "toolu_fine"


def test_the_history_is_repaired_before_the_upstream_sees_it() -> None:
    body = {"tools": [READ], "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "bad.id", "name": "Read",
                                           "input": {"path": "a"}},
                                          {"type": "tool_use", "id": "toolu_lost",
                                           "name": "Read", "input": {"path": "b"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "bad.id",
                                      "content": "x"}]}]}
    result = run_stage(ToolHygieneStage(), body)
    sent = result.calls[0]
    assert sent.body_replaced
    raw = json.loads(sent.raw_body)
    assert raw == json.loads(sent.raw_body) and raw["tools"] == [READ]
    new = derived_id(1, 0, "bad.id")
    assert [b["id"] for b in raw["messages"][1]["content"]] == [new, "toolu_lost"]
    assert raw["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_lost", "is_error": True,
         "content": "the tool call was interrupted"},
        {"type": "tool_result", "tool_use_id": new, "content": "x"}]
    assert sent.request is not None and sent.request.messages[2].content == \
        raw["messages"][2]["content"]
    assert sent.original_body != sent.raw_body


def test_count_tokens_sees_the_repaired_history() -> None:
    exchange = make_exchange({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t.1", "name": "Read",
                                           "input": {}}]},
        {"role": "user", "content": "hm"}]}, operation="count_tokens")
    result = run_stage(ToolHygieneStage(), exchange, reply=Reply.json({"input_tokens": 3}))
    assert result.reply is not None and result.reply.body == {"input_tokens": 3}
    sent = json.loads(result.calls[0].raw_body)
    assert sent["messages"][2]["content"][0]["type"] == "tool_result"


def test_no_conversion_when_tools_are_not_offered_or_tool_choice_is_none() -> None:
    for body in ({"messages": BODY["messages"]}, {**BODY, "tool_choice": {"type": "none"}}):
        result = run_stage(ToolHygieneStage(), body, reply=reply_text(CALL))
        assert result.text == CALL
        assert result.message is not None and result.message["stop_reason"] == "end_turn"


def test_invalid_arguments_stay_text_or_pass() -> None:
    bad = render("hermes", "Read", {"path": 3})
    assert run_stage(ToolHygieneStage(), BODY, reply=reply_text(bad)).text == bad
    result = run_stage(ToolHygieneStage(ToolHygieneOptions(invalid_arguments="pass")), BODY,
                       reply=reply_text(bad))
    assert result.message is not None
    assert result.message["content"][0]["input"] == {"path": 3}


def test_pings_pass_at_once_and_flow_control_reaches_the_upstream() -> None:
    source = ManualSource()

    async def proceed(_: Any) -> Reply:
        return Reply(stream=source.stream())

    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(ToolHygieneStage()(make_exchange(BODY), proceed))
    replies: list[Reply] = []
    d.addCallback(replies.append)
    stream = replies[0].stream
    assert stream is not None
    sink = CollectingSink()
    stream.start(sink)
    source.send(ev.message_start("m", "m", ev.empty_usage()), ev.ping(), ev.text_block_start(0),
                ev.text_delta(0, "see <tool_c"))
    assert [e["type"] for e in sink.events] == ["message_start", "ping",
                                               "content_block_start", "content_block_delta"]
    assert sink.events[-1]["delta"]["text"] == "see "  # only the marker prefix is held
    source.send(ev.ping())
    assert sink.events[-1] == ev.ping()
    stream.pause()
    assert source.paused
    stream.resume()
    assert not source.paused
    stream.stop()
    assert source.stopped


def test_options_are_strict() -> None:
    stage = build_stage("tool-hygiene", {"formats": ["hermes"], "orphan_results": "drop"})
    assert stage.options == ToolHygieneOptions(formats=("hermes",), orphan_results="drop")
    for bad in ({"format": ["hermes"]}, {"formats": ["qwen"]},
                {"invalid_arguments": "flag"}, {"fix_ids": "yes"},
                {"formats": [], "fix_ids": False, "repair_history": False}):
        with pytest.raises((ConfigError, ValueError)):
            build_stage("tool-hygiene", bad)
