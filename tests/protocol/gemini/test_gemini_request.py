"""A→G request translation (mapping.md §5), one test per rule (R-G…)."""

from __future__ import annotations

from typing import Any

import pytest

from txrelay.protocol.anthropic import request_from_json
from txrelay.protocol.errors import RelayError
from txrelay.protocol.gemini import (
    GeminiToolNames,
    build_count_tokens_request,
    build_generate_request,
    signatures,
)
from txrelay.protocol.gemini.names import gemini_function_name
from txrelay.protocol.jsoncodec import dumps

G25 = "gemini-2.5-flash"
G3 = "gemini-3-pro-preview"


def req(**body: Any) -> Any:
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("max_tokens", 1024)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return request_from_json(body)


def build(model: str = G25, max_output: int | None = 65536, **body: Any) -> dict[str, Any]:
    return build_generate_request(req(**body), upstream_model=model, max_output_tokens=max_output)


def tool(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool",
            "input_schema": schema or {"type": "object", "properties": {"x": {"type": "string"}}}}


def use(tool_id: str, name: str = "Read", **inp: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": inp}


def result(tool_id: str, content: Any = "ok", **kw: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **kw}


# --- system (R-G1) and roles (R-G3) -------------------------------------------------------


def test_r_g1_system_blocks_to_system_instruction_without_billing_header() -> None:
    body = build(system=[
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=abc;"},
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
    ])
    assert body["systemInstruction"] == {
        "role": "user", "parts": [{"text": "You are Claude Code.\n\nBe brief."}]}


def test_r_g1_no_system_no_instruction() -> None:
    assert "systemInstruction" not in build()


def test_r_g3_roles_and_same_role_turns_merged() -> None:
    body = build(messages=[
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": ""}]},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
        {"role": "user", "content": "e"},
    ])
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "c"}, {"text": "d"}]},
        {"role": "user", "parts": [{"text": "e"}]},
    ]


def test_r_g3_empty_turns_are_dropped() -> None:
    body = build(messages=[
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": "b"},
    ])
    assert body["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]
    assert all(c["parts"] for c in body["contents"])


def test_mid_conversation_system_is_a_user_part_and_keeps_the_prefix() -> None:
    """The cached prefix (systemInstruction and earlier contents) does not change."""
    base = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    before = build(system="S", messages=[*base, {"role": "user", "content": "c"}])
    after = build(system="S", messages=[*base, {"role": "system", "content": "Reminder"},
                                        {"role": "user", "content": "c"}])
    assert after["systemInstruction"] == before["systemInstruction"] == {
        "role": "user", "parts": [{"text": "S"}]}
    assert after["contents"][:2] == before["contents"][:2]
    assert after["contents"][2] == {"role": "user", "parts": [
        {"text": "<system>\nReminder\n</system>"}, {"text": "c"}]}


def test_leading_system_messages_join_the_instruction() -> None:
    body = build(system="S", messages=[{"role": "system", "content": "T"},
                                       {"role": "user", "content": "u"}])
    assert body["systemInstruction"] == {"role": "user", "parts": [{"text": "S\n\nT"}]}


# --- tools in history (R-G4, R-G5, R-G6) --------------------------------------------------


def test_r_g4_function_response_named_by_tool_use_id() -> None:
    body = build(messages=[
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"},
                                          use("toolu_1", "Read", path="a")]},
        {"role": "user", "content": [result("toolu_1", "# A"), {"type": "text", "text": "and?"}]},
    ])
    model, user = body["contents"][1], body["contents"][2]
    assert model["parts"][1] == {"functionCall": {"name": "Read", "args": {"path": "a"}}}
    assert user["parts"] == [
        {"functionResponse": {"name": "Read", "response": {"output": "# A"}}},
        {"text": "and?"},
    ]


def test_r_g4_error_result_uses_error_key() -> None:
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_1")]},
        {"role": "user", "content": [result("toolu_1", [{"type": "text", "text": "boom"}],
                                            is_error=True)]},
    ])
    assert body["contents"][2]["parts"][0]["functionResponse"]["response"] == {"error": "boom"}


def test_r_g5_as_many_responses_as_calls_in_call_order() -> None:
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_a", "Read"), use("toolu_b", "Grep"),
                                          use("toolu_c", "Bash")]},
        {"role": "user", "content": [{"type": "text", "text": "note"}, result("toolu_c", "C"),
                                     result("toolu_a", "A")]},
    ])
    user = body["contents"][2]["parts"]
    assert [p.get("functionResponse", {}).get("name") for p in user] == [
        "Read", "Grep", "Bash", None]
    assert user[0]["functionResponse"]["response"] == {"output": "A"}
    assert user[1]["functionResponse"]["response"] == {"output": "(no result)"}
    assert user[2]["functionResponse"]["response"] == {"output": "C"}
    assert user[3] == {"text": "note"}


def test_r_g5_results_split_over_two_user_messages_stay_in_one_turn() -> None:
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_a"), use("toolu_b")]},
        {"role": "user", "content": [result("toolu_a")]},
        {"role": "user", "content": [result("toolu_b"), {"type": "text", "text": "t"}]},
    ])
    assert len(body["contents"]) == 3
    parts = body["contents"][2]["parts"]
    assert sum("functionResponse" in p for p in parts) == 2
    assert parts[-1] == {"text": "t"}


def test_r_g5_calls_without_any_results_get_synthesized_responses() -> None:
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_a")]},
        {"role": "user", "content": "never mind"},
    ])
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "Read", "response": {"output": "(no result)"}}},
        {"text": "never mind"},
    ]


def test_r_g6_result_without_a_call_becomes_text() -> None:
    body = build(messages=[{"role": "user", "content": [result("toolu_zz", "orphan")]}])
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Tool result (toolu_zz): orphan"}]}]


def test_mid_system_between_call_and_results_goes_after_responses() -> None:
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_a")]},
        {"role": "system", "content": "S"},
        {"role": "user", "content": [result("toolu_a")]},
    ])
    parts = body["contents"][2]["parts"]
    assert "functionResponse" in parts[0]
    assert parts[1] == {"text": "<system>\nS\n</system>"}


def test_r_x13_gemini_ids_sent_back_on_call_and_response() -> None:
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_gm_abc-1"), use("toolu_gx_Q2")]},
        {"role": "user", "content": [result("toolu_gm_abc-1"), result("toolu_gx_Q2")]},
    ])
    calls = [p["functionCall"] for p in body["contents"][1]["parts"]]
    responses = [p["functionResponse"] for p in body["contents"][2]["parts"]]
    assert calls[0]["id"] == responses[0]["id"] == "abc-1"
    assert "id" not in calls[1] and "id" not in responses[1]


def test_tool_result_images_follow_the_responses_as_inline_data() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBOR"}}
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_a")]},
        {"role": "user", "content": [result("toolu_a", [{"type": "text", "text": "shot"}, image]),
                                     {"type": "text", "text": "look"}]},
    ])
    parts = body["contents"][2]["parts"]
    assert parts[0]["functionResponse"]["response"]["output"].startswith("shot")
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}
    assert parts[2] == {"text": "look"}


# --- media --------------------------------------------------------------------------------


def test_images_and_pdfs_as_inline_data() -> None:
    body = build(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "JVBER"}, "title": "spec.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "plain"}},
        {"type": "image", "source": {"type": "url", "url": "gs://bucket/cat.png"}},
    ]}])
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j"}},
        {"text": "spec.pdf"},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}},
        {"text": "plain"},
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}},
    ]


@pytest.mark.parametrize("source", [
    {"type": "url", "url": "https://example.com/a.png"},
    {"type": "file", "file_id": "file_1"},
])
def test_media_gemini_cannot_fetch_is_a_clear_400(source: dict[str, Any]) -> None:
    with pytest.raises(RelayError) as info:
        build(messages=[{"role": "user", "content": [{"type": "image", "source": source}]}])
    assert info.value.status == 400
    assert "Gemini" in info.value.message


# --- tools (R-G7, R-G8), names, tool_choice -----------------------------------------------


def test_r_g7_one_tool_object_with_cleaned_declarations() -> None:
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "additionalProperties": False,
              "properties": {"q": {"type": "string", "format": "uri"}}, "required": ["q"]}
    body = build(tools=[tool("Search", schema), tool("Empty", {"type": "object"}),
                        {"type": "web_search_20250305", "name": "web_search"}])
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "Search", "description": "the Search tool",
         "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                        "required": ["q"]}},
        {"name": "Empty", "description": "the Empty tool"},
    ]}]


def test_only_server_tools_means_no_tools_field() -> None:
    body = build(tools=[{"type": "web_search_20250305", "name": "web_search"}],
                 tool_choice={"type": "any"})
    assert "tools" not in body and "toolConfig" not in body


@pytest.mark.parametrize("name", ["mcp__github__create_issue", "Read", "_x", "a.b:c-d"])
def test_legal_names_unchanged(name: str) -> None:
    assert gemini_function_name(name) == name


@pytest.mark.parametrize("name", ["9lives", "has space", "ünïcode", "x" * 80, "a/b", ""])
def test_illegal_names_mapped_and_restored(name: str) -> None:
    mapped = gemini_function_name(name)
    assert len(mapped) <= 64
    assert mapped[0].isalpha() or mapped[0] == "_"
    assert all((c.isalnum() and c.isascii()) or c in "_.:-" for c in mapped)
    names = GeminiToolNames.from_names([name, "other"])
    assert names.client(names.upstream(name)) == name


def test_names_mapped_in_declarations_history_and_choice() -> None:
    bad = "fs read!"
    body = build(
        tools=[tool(bad)],
        tool_choice={"type": "tool", "name": bad},
        messages=[{"role": "user", "content": "x"},
                  {"role": "assistant", "content": [use("toolu_a", bad)]},
                  {"role": "user", "content": [result("toolu_a")]}],
    )
    mapped = gemini_function_name(bad)
    assert body["tools"][0]["functionDeclarations"][0]["name"] == mapped
    assert body["contents"][1]["parts"][0]["functionCall"]["name"] == mapped
    assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == mapped
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [mapped]}}


@pytest.mark.parametrize(("choice", "config"), [
    (None, None),
    ({"type": "auto"}, {"mode": "AUTO"}),
    ({"type": "any"}, {"mode": "ANY"}),
    ({"type": "none"}, {"mode": "NONE"}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"mode": "AUTO"}),
])
def test_tool_choice_modes(choice: dict[str, Any] | None, config: dict[str, Any] | None) -> None:
    body = build(tools=[tool("Read")], **({"tool_choice": choice} if choice else {}))
    assert body.get("toolConfig") == (None if config is None else
                                      {"functionCallingConfig": config})


def test_tool_choice_naming_an_unknown_tool_is_a_400() -> None:
    with pytest.raises(RelayError) as info:
        build(tools=[tool("Read")], tool_choice={"type": "tool", "name": "Nope"})
    assert info.value.status == 400


# --- generation config (R-G2) -------------------------------------------------------------


def test_r_g2_max_tokens_clamped_and_sampling_fields() -> None:
    body = build(max_output=8192, max_tokens=32000, temperature=0.2, top_p=0.9, top_k=40,
                 stop_sequences=["a", "b", "c", "d", "e", "f", ""])
    gen = body["generationConfig"]
    assert gen["maxOutputTokens"] == 8192
    assert gen["temperature"] == 0.2 and gen["topP"] == 0.9 and gen["topK"] == 40
    assert gen["stopSequences"] == ["a", "b", "c", "d", "e"]


def test_json_output_format() -> None:
    body = build(output_config={"format": {"type": "json_schema", "schema": {
        "type": "object", "additionalProperties": False,
        "properties": {"a": {"type": "integer"}}}}})
    gen = body["generationConfig"]
    assert gen["responseMimeType"] == "application/json"
    assert gen["responseSchema"] == {"type": "object", "properties": {"a": {"type": "integer"}}}


# --- thinking (R-G9) ----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "body", "expected"), [
    (G25, {"thinking": {"type": "enabled", "budget_tokens": 10000}},
     {"thinkingBudget": 10000, "includeThoughts": True}),
    (G25, {"thinking": {"type": "adaptive"}}, {"thinkingBudget": -1, "includeThoughts": True}),
    (G25, {}, {"thinkingBudget": 0}),
    ("gemini-2.5-pro", {}, None),
    (G25, {"thinking": {"type": "enabled", "budget_tokens": 5000, "display": "omitted"}},
     {"thinkingBudget": 5000}),
    (G25, {"output_config": {"effort": "low"}}, {"thinkingBudget": 1024}),
    (G3, {"thinking": {"type": "enabled", "budget_tokens": 2048}},
     {"thinkingLevel": "LOW", "includeThoughts": True}),
    (G3, {"thinking": {"type": "enabled", "budget_tokens": 20000}},
     {"thinkingLevel": "HIGH", "includeThoughts": True}),
    (G3, {"thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"}},
     {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("gemini-3-flash-preview", {"output_config": {"effort": "medium"}},
     {"thinkingLevel": "MEDIUM"}),
    (G3, {}, None),
    ("gemini-2.0-flash", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, None),
])
def test_r_g9_thinking_config(model: str, body: dict[str, Any],
                              expected: dict[str, Any] | None) -> None:
    gen = build(model=model, max_tokens=32000, **body)["generationConfig"]
    assert gen.get("thinkingConfig") == expected
    if expected:
        assert not ("thinkingBudget" in expected and "thinkingLevel" in expected)


def test_r_g9_budget_leaves_room_for_the_answer() -> None:
    gen = build(max_output=8192, max_tokens=32000,
                thinking={"type": "enabled", "budget_tokens": 31999})["generationConfig"]
    assert gen["maxOutputTokens"] == 8192
    assert gen["thinkingConfig"]["thinkingBudget"] == 8192 - 1024


def test_explicit_thinking_style_none_sends_no_thinking_config() -> None:
    body = build_generate_request(req(thinking={"type": "enabled", "budget_tokens": 2048}),
                                  upstream_model="my-tuned", max_output_tokens=None,
                                  thinking_style="none")
    assert "thinkingConfig" not in body.get("generationConfig", {})


# --- determinism, count_tokens ------------------------------------------------------------


def test_build_is_deterministic() -> None:
    kw: dict[str, Any] = {"tools": [tool("fs read!")], "system": "S", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_a", "fs read!")]},
        {"role": "user", "content": [result("toolu_a")]}]}
    assert dumps(build(**kw)) == dumps(build(**kw))


def test_count_tokens_body_ai_studio_and_vertex() -> None:
    r = req(system="S", tools=[tool("Read")])
    studio = build_count_tokens_request(r, upstream_model=G25)
    inner = studio["generateContentRequest"]
    assert inner["model"] == "models/gemini-2.5-flash"
    assert inner["systemInstruction"] == {"role": "user", "parts": [{"text": "S"}]}
    assert inner["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert inner["tools"][0]["functionDeclarations"][0]["name"] == "Read"
    vertex = build_count_tokens_request(r, upstream_model=G25, vertex=True)
    assert set(vertex) == {"contents", "systemInstruction", "tools"}


def test_placeholder_constant_is_googles() -> None:
    assert signatures.PLACEHOLDER == "skip_thought_signature_validator"


def test_all_empty_messages_is_a_clear_400() -> None:
    with pytest.raises(RelayError) as info:
        build(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}])
    assert info.value.status == 400
    assert "empty" in info.value.message


def test_r_g5_repeated_tool_use_ids_pair_by_position() -> None:
    """A bad history repeating an id still gives each call a response with its own name."""
    body = build(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [use("toolu_x", "Read"), use("toolu_x", "Bash")]},
        {"role": "user", "content": [result("toolu_x", "r1"), result("toolu_x", "r2")]},
    ])
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "Read", "response": {"output": "r1"}}},
        {"functionResponse": {"name": "Bash", "response": {"output": "r2"}}},
    ]
