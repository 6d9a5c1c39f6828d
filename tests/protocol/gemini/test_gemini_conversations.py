"""
Any conversation the front end accepts becomes a request a strict Gemini would take
(R-G3, R-G5, R-G6, R-G10): generated conversations checked against the service's rules.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txrelay.protocol.anthropic import request_from_json
from txrelay.protocol.gemini import build_generate_request, signatures

from .test_gemini_schema import assert_gemini_schema

G3 = "gemini-3-flash-preview"
G25 = "gemini-2.5-flash"
IDS = ["toolu_01A", "toolu_gm_x1", "toolu_gx_Q"]
NAMES = ["Read", "Bash", "fs read!", "9tool"]
DATA_MEMBERS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")

_text = st.sampled_from(["", " ", "hello", "\n", "x" * 5])
_signature = st.one_of(
    st.text(max_size=10),
    st.builds(signatures.encode_call, st.sampled_from(IDS),
              st.sampled_from(["QUJD", "c2ln+/=="]), st.sampled_from([G3, G25, "other"])),
    st.builds(signatures.encode_thought, st.sampled_from(["VA==", "dA"]),
              st.sampled_from([G3, G25])),
    st.just("txr1.oai.abc"),
)
_user_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.just({"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBOR"}}),
    st.builds(lambda i, t, e: {"type": "tool_result", "tool_use_id": i, "content": t,
                               "is_error": e}, st.sampled_from(IDS), _text, st.booleans()),
    st.builds(lambda i: {"type": "tool_result", "tool_use_id": i, "content": [
        {"type": "text", "text": "r"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AA"}}]}, st.sampled_from(IDS)),
    st.just({"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "doc"}}),
)
_assistant_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, _text,
              _signature),
    st.builds(lambda i, n: {"type": "tool_use", "id": i, "name": n, "input": {"a": 1}},
              st.sampled_from(IDS), st.sampled_from(NAMES)),
    st.just({"type": "redacted_thinking", "data": "zzz"}),
)
_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c},
              st.lists(_user_block, max_size=4) | _text),
    st.builds(lambda c: {"role": "assistant", "content": c},
              st.lists(_assistant_block, max_size=4) | _text),
    st.builds(lambda t: {"role": "system", "content": t}, _text),
)



@st.composite
def _tool_round(draw: st.DrawFn) -> list[dict[str, Any]]:
    """An assistant turn with calls and a user turn answering some of them, maybe shuffled."""
    calls = draw(st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from(NAMES)),
                          min_size=1, max_size=3))
    extra = draw(st.lists(_assistant_block, max_size=2))
    assistant = [{"type": "tool_use", "id": i, "name": n, "input": {}} for i, n in calls]
    answered = draw(st.lists(st.sampled_from([i for i, _ in calls] + ["toolu_stray"]),
                             max_size=4))
    results: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": i, "content": f"r{k}"}
        for k, i in enumerate(answered)]
    results += draw(st.lists(_user_block, max_size=2))
    return [{"role": "assistant", "content": draw(st.permutations(assistant + extra))},
            {"role": "user", "content": draw(st.permutations(results))}]


_conversation = st.lists(
    st.one_of(_message.map(lambda m: [m]), _tool_round()), min_size=1, max_size=6,
).map(lambda rounds: [m for r in rounds for m in r])


def check_strict(body: dict[str, Any], *, gemini3: bool) -> None:
    """What the service enforces (gemini.md §2, §3, §6 and its 400 messages)."""
    contents = body["contents"]
    assert contents
    previous_role = None
    for content in contents:
        assert content["role"] in ("user", "model")
        assert content["parts"], "contents.parts must not be empty"
        assert content["role"] != previous_role, "same-role turns must be merged"
        previous_role = content["role"]
        for part in content["parts"]:
            members = [m for m in DATA_MEMBERS if m in part]
            assert len(members) == 1, part
            if "text" in part:
                assert isinstance(part["text"], str) and part["text"]
            if "functionResponse" in part:
                assert content["role"] == "user"
                assert part["functionResponse"]["name"]
            if "functionCall" in part:
                assert content["role"] == "model"
    # R-G5: a call turn is followed by exactly as many responses, in order, first.
    for i, content in enumerate(contents):
        calls = [p["functionCall"] for p in content["parts"] if "functionCall" in p]
        responses_here = [p for p in content["parts"] if "functionResponse" in p]
        if content["role"] == "user":
            before = contents[i - 1] if i else None
            expected = ([p["functionCall"] for p in before["parts"] if "functionCall" in p]
                        if before else [])
            assert len(responses_here) == len(expected)
            head = content["parts"][: len(expected)]
            for call, part in zip(expected, head, strict=True):
                response = part["functionResponse"]
                assert response["name"] == call["name"]
                assert response.get("id") == call.get("id")
        elif calls and i + 1 < len(contents):
            assert contents[i + 1]["role"] == "user"
    # R-G10.2 (Gemini 3): the current turn's first call of every step is signed.
    if gemini3:
        start = 0
        for i, content in enumerate(contents):
            if content["role"] == "user" and any(
                "functionResponse" not in p for p in content["parts"]
            ):
                start = i + 1
        for content in contents[start:]:
            first = next((p for p in content["parts"] if "functionCall" in p), None)
            if content["role"] == "model" and first is not None:
                assert first.get("thoughtSignature"), content
    for tool in body.get("tools", ()):
        assert tool["functionDeclarations"]
        for decl in tool["functionDeclarations"]:
            if "parameters" in decl:
                assert_gemini_schema(decl["parameters"])
    gen = body.get("generationConfig", {})
    thinking = gen.get("thinkingConfig", {})
    assert not ("thinkingBudget" in thinking and "thinkingLevel" in thinking)
    assert len(gen.get("stopSequences", ())) <= 5


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_conversation, gemini3=st.booleans())
def test_generated_conversations_satisfy_gemini(messages: list[Any], gemini3: bool) -> None:
    messages = [{"role": "user", "content": "start"}, *messages]
    req = request_from_json({
        "model": "claude", "max_tokens": 2000, "messages": messages,
        "tools": [{"name": n, "input_schema": {"type": "object", "properties": {
            "a": {"type": ["integer", "null"], "exclusiveMinimum": 0}},
            "additionalProperties": False}} for n in NAMES],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    })
    body = build_generate_request(req, upstream_model=G3 if gemini3 else G25,
                                  max_output_tokens=8192)
    check_strict(body, gemini3=gemini3)
