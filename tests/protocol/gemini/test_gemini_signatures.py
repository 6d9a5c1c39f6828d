"""
Thought signatures round trip statelessly through the client (R-G10, mapping.md §5.6, §10):
Gemini response → Anthropic message → the client echoes it → next request puts each
signature back on the exact part it came with.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.anthropic import request_from_json
from txrelay.protocol.gemini import (
    GeminiStreamTranslator,
    GeminiToolNames,
    build_generate_request,
    gemini_response_events,
    signatures,
)

G25 = "gemini-2.5-flash"
G3 = "gemini-3-pro-preview"
SIG_A = "CiQBcsjafA+/x0=="
SIG_B = "Ek4KTAHR_-sigB"
SIG_T = "VGhvdWdodA=="


def sse(*chunks: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


def respond(model: str, *gemini_parts: dict[str, Any], rid: str = "r1") -> dict[str, Any]:
    """Stream ``gemini_parts`` through the translator; the client's final message."""
    t = GeminiStreamTranslator(model="claude", input_tokens=1, upstream_model=model,
                               tool_names=GeminiToolNames())
    chunk = {"candidates": [{"content": {"role": "model", "parts": list(gemini_parts)},
                             "finishReason": "STOP", "index": 0}], "responseId": rid}
    events = t.start() + t.feed(sse(chunk)) + t.finish()
    acc = MessageAccumulator()
    for e in events:
        acc.feed(e)
    return acc.result()


def echo(messages: list[dict[str, Any]], message: dict[str, Any], results: bool = True) -> None:
    """What Claude Code does: append the assistant message and the tool results."""
    messages.append({"role": "assistant", "content": message["content"]})
    ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
    if results and ids:
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": i, "content": f"result {n}"}
            for n, i in enumerate(ids)]})


def next_request(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    req = request_from_json({"model": "claude", "max_tokens": 1000, "messages": messages,
                             "thinking": {"type": "enabled", "budget_tokens": 2000}})
    return build_generate_request(req, upstream_model=model, max_output_tokens=None)


def model_parts(body: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [c["parts"] for c in body["contents"] if c["role"] == "model"]


def call(name: str, sig: str | None = None, **kw: Any) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": name, "args": kw}}
    if sig:
        part["thoughtSignature"] = sig
    return part


def test_parallel_calls_signature_back_on_the_first_call_only() -> None:
    """mapping §14 item 11."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    msg = respond(G3, {"text": "plan", "thought": True, "thoughtSignature": SIG_T},
                  call("Read", SIG_A, path="a"), call("Grep", pattern="x"))
    echo(messages, msg)
    (parts,) = model_parts(next_request(G3, messages))
    assert parts == [
        {"text": "plan", "thought": True, "thoughtSignature": SIG_T},
        {"functionCall": {"name": "Read", "args": {"path": "a"}}, "thoughtSignature": SIG_A},
        {"functionCall": {"name": "Grep", "args": {"pattern": "x"}}},
    ]


def test_sequential_steps_each_keep_their_own_signature() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    echo(messages, respond(G3, call("Read", SIG_A), rid="r1"))
    echo(messages, respond(G3, call("Bash", SIG_B, command="ls"), rid="r2"))
    body = next_request(G3, messages)
    first, second = model_parts(body)
    assert first[0]["thoughtSignature"] == SIG_A
    assert second[0]["thoughtSignature"] == SIG_B
    # the responses pair with their calls, one per call, in the turn after each
    users = [c for c in body["contents"] if c["role"] == "user"][1:]
    assert [p["functionResponse"]["name"] for u in users for p in u["parts"]] == ["Read", "Bash"]


def test_gemini_call_ids_round_trip() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    part = call("Read", SIG_A)
    part["functionCall"]["id"] = "fc_77"
    msg = respond(G3, part)
    assert msg["content"][1]["id"] == "toolu_gm_fc_77"
    echo(messages, msg)
    body = next_request(G3, messages)
    assert body["contents"][1]["parts"][0]["functionCall"]["id"] == "fc_77"
    assert body["contents"][2]["parts"][0]["functionResponse"]["id"] == "fc_77"


def test_non_streaming_response_carries_the_same_signatures() -> None:
    body = {"candidates": [{"content": {"role": "model", "parts": [call("Read", SIG_A)]},
                            "finishReason": "STOP"}], "responseId": "r9"}
    acc = MessageAccumulator()
    for e in gemini_response_events(body, model="claude", input_tokens=1, upstream_model=G3):
        acc.feed(e)
    msg = acc.result()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    echo(messages, msg)
    assert model_parts(next_request(G3, messages))[0][0]["thoughtSignature"] == SIG_A


def test_tampered_carrier_is_ignored_and_the_placeholder_used() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    msg = respond(G3, call("Read", SIG_A))
    carrier = msg["content"][0]
    carrier["signature"] = carrier["signature"][:-3] + "xyz"
    echo(messages, msg)
    part = model_parts(next_request(G3, messages))[0][0]
    assert part["thoughtSignature"] == signatures.PLACEHOLDER


def test_carrier_moved_to_another_call_is_ignored() -> None:
    """The carrier names its tool-use id: it cannot sign a different call."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    msg = respond(G25, call("Read", SIG_A))
    msg["content"][1]["id"] = "toolu_other"
    echo(messages, msg)
    assert "thoughtSignature" not in model_parts(next_request(G25, messages))[0][0]


def test_signature_from_another_model_is_not_replayed() -> None:
    """R-G10.3: a conversation moved from 2.5 Flash to 3 Pro drops the old signatures."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    echo(messages, respond(G25, {"text": "t", "thought": True, "thoughtSignature": SIG_T},
                           call("Read", SIG_A)))
    (parts,) = model_parts(next_request(G3, messages))
    assert parts == [{"functionCall": {"name": "Read", "args": {}},
                      "thoughtSignature": signatures.PLACEHOLDER}]


def test_client_dropping_the_empty_thinking_block_gets_the_placeholder() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    msg = respond(G3, call("Read", SIG_A))
    msg["content"] = [b for b in msg["content"] if b["type"] != "thinking"]
    echo(messages, msg)
    assert model_parts(next_request(G3, messages))[0][0]["thoughtSignature"] == (
        signatures.PLACEHOLDER)


def test_foreign_history_gets_placeholders_in_the_current_turn_only() -> None:
    """mapping §14 item 12: an OpenAI-produced history sent to Gemini 3."""
    messages = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "txr1.oai.abc"},
            {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A",
                                      "content": "x"}]},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "now"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {}},
            {"type": "tool_use", "id": "toolu_01C", "name": "Grep", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "b"},
            {"type": "tool_result", "tool_use_id": "toolu_01C", "content": "c"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01D", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01D",
                                      "content": "d"}]},
    ]
    body = next_request(G3, messages)
    old, _text, step1, step2 = model_parts(body)
    assert old == [{"functionCall": {"name": "Read", "args": {}}}]  # earlier turn: untouched
    assert step1[0]["thoughtSignature"] == signatures.PLACEHOLDER
    assert "thoughtSignature" not in step1[1]
    assert step2[0]["thoughtSignature"] == signatures.PLACEHOLDER
    responses = [c for c in body["contents"] if c["role"] == "user"][3]["parts"]
    assert len(responses) == 2  # as many responses as calls


def test_gemini_25_gets_no_placeholder_by_default() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01B",
                                      "content": "b"}]},
    ]
    assert "thoughtSignature" not in model_parts(next_request(G25, messages))[0][0]


def test_anthropic_and_openai_thinking_blocks_are_dropped() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "a", "signature": "EqoBCkgIARABGAIiQL"},
            {"type": "redacted_thinking", "data": "abc"},
            {"type": "thinking", "thinking": "b", "signature": "txr1.oai.x"},
            {"type": "text", "text": "answer"}]},
        {"role": "user", "content": "y"},
    ]
    assert model_parts(next_request(G3, messages)) == [[{"text": "answer"}]]


@settings(max_examples=200, deadline=None)
@given(signature=st.text(max_size=80) | st.sampled_from([
    "txr1.gem.fc.", "txr1.gem.fc.toolu_1..", "txr1.gem.fc.toolu_1.abc.", "txr1.gem.th..x",
    "txr1.gem.th.", "txr1.gem.fc.a.b.c.d.e", "txr1.gem.fc.toolu 1.x.y", "txr1.gem.none.",
]), prefix=st.sampled_from(["", "txr1.gem.th.", "txr1.gem.fc.toolu_1.", "txr1.gem.fc."]))
def test_any_signature_text_is_safe(signature: str, prefix: str) -> None:
    """A bad signature is ignored, never a crash, never sent to Gemini."""
    value = prefix + signature
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": value},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "r"}]},
    ]
    parts = model_parts(next_request(G3, messages))[0]
    assert parts[-1]["thoughtSignature"] == signatures.PLACEHOLDER
    assert len(parts) == 1


def test_decoders_reject_non_strings() -> None:
    for value in (None, 1, [], {}, b"txr1.gem.th.x.y"):
        assert signatures.decode_thought(value, G3) is None
        assert signatures.decode_call(value, G3) is None


def test_r_g10_3_retry_without_signatures() -> None:
    """After Gemini rejected a signature, the retry replays none and uses placeholders."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    echo(messages, respond(G3, {"text": "t", "thought": True, "thoughtSignature": SIG_T},
                           call("Read", SIG_A)))
    req = request_from_json({"model": "claude", "max_tokens": 1000, "messages": messages})
    body = build_generate_request(req, upstream_model=G3, max_output_tokens=None,
                                  replay_signatures=False)
    assert model_parts(body) == [[{"functionCall": {"name": "Read", "args": {}},
                                   "thoughtSignature": signatures.PLACEHOLDER}]]


_sig = st.text(alphabet="ABCDEFabcdef0123456789+/=_-", min_size=2, max_size=12)
_gemini_part = st.one_of(
    st.builds(lambda t, s: {"text": t, "thought": True, **({"thoughtSignature": s} if s else {})},
              st.text(max_size=6), st.none() | _sig),
    st.builds(lambda t: {"text": t}, st.text(max_size=6)),
    st.builds(lambda n, a, s, i: {"functionCall": {"name": n, "args": {"a": a},
                                                   **({"id": i} if i else {})},
                                  **({"thoughtSignature": s} if s else {})},
              st.sampled_from(["Read", "Bash", "Grep"]), st.integers(0, 3), st.none() | _sig,
              st.none() | st.sampled_from(["c1", "c2", "bad id!"])),
)


@settings(max_examples=300, deadline=None)
@given(gemini_parts=st.lists(_gemini_part, min_size=1, max_size=8),
       split=st.integers(1, 4))
def test_generated_responses_round_trip_every_call_signature(
    gemini_parts: list[dict[str, Any]], split: int
) -> None:
    """Each functionCall part gets back exactly its own signature, whatever the response."""
    chunks = [
        {"candidates": [{"content": {"role": "model", "parts": gemini_parts[i : i + split]},
                         "index": 0}], "responseId": "gen"}
        for i in range(0, len(gemini_parts), split)
    ]
    chunks[-1]["candidates"][0]["finishReason"] = "STOP"
    t = GeminiStreamTranslator(model="claude", input_tokens=1, upstream_model=G3)
    acc = MessageAccumulator()
    for e in t.start() + t.feed(sse(*chunks)) + t.finish():
        acc.feed(e)
    msg = acc.result()
    ids = [b["id"] for b in msg["content"] if b["type"] == "tool_use"]
    assert len(set(ids)) == len(ids)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    echo(messages, msg)
    body = next_request(G3, messages)
    rebuilt = [p for parts in model_parts(body) for p in parts]
    sent_calls = [p for p in gemini_parts if "functionCall" in p]
    got_calls = [p for p in rebuilt if "functionCall" in p]
    assert [(p["functionCall"]["name"], p["functionCall"]["args"]) for p in got_calls] == [
        (p["functionCall"]["name"], p["functionCall"]["args"]) for p in sent_calls]
    for n, (sent, got) in enumerate(zip(sent_calls, got_calls, strict=True)):
        expected = sent.get("thoughtSignature")
        if expected is None and n == 0:
            expected = signatures.PLACEHOLDER  # R-G10.2: the step's first call
        assert got.get("thoughtSignature") == expected
    thought_sigs = {p["thoughtSignature"] for p in gemini_parts
                    if p.get("thought") is True and "thoughtSignature" in p}
    for p in rebuilt:
        if p.get("thought"):
            assert p["thoughtSignature"] in thought_sigs
        elif "text" in p:
            assert "thoughtSignature" not in p


def test_placeholder_reaches_steps_before_a_result_with_an_image() -> None:
    """A user turn of results plus an attachment does not end the current turn early."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AA"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01A", "name": "Screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A",
                                      "content": [image]}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01B",
                                      "content": "x"}]},
    ]
    first, second = model_parts(next_request(G3, messages))
    assert first[0]["thoughtSignature"] == signatures.PLACEHOLDER
    assert second[0]["thoughtSignature"] == signatures.PLACEHOLDER
