"""A→O request translation (mapping.md §2), one test or more per rule."""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
import pytest

from txrelay.protocol.anthropic import MessagesRequest, request_from_json
from txrelay.protocol.errors import RelayError
from txrelay.protocol.openai import PRESETS, OpenAIDialect, ToolNameMap, build_chat_request
from txrelay.protocol.openai.request import (
    encode_orx,
    mistral_tool_id,
    upstream_tool_name,
)

GENERIC = PRESETS["generic"]


def req(**body: Any) -> MessagesRequest:
    body.setdefault("model", "claude-sonnet-4-5")
    body.setdefault("max_tokens", 1024)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return request_from_json(body)


def build(
    request: MessagesRequest,
    dialect: OpenAIDialect = GENERIC,
    *,
    stream: bool = True,
    max_output_tokens: int | None = None,
    **kw: Any,
) -> dict[str, Any]:
    return build_chat_request(
        request,
        upstream_model="up-model",
        dialect=dialect,
        max_output_tokens=max_output_tokens,
        stream=stream,
        **kw,
    )


def d(**fields: Any) -> OpenAIDialect:
    return attrs.evolve(GENERIC, **fields)


READ_TOOL = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
        "additionalProperties": False,
    },
    "cache_control": {"type": "ephemeral"},
}


def tool_turn(
    tool_id: str = "toolu_01", name: str = "Read", result: Any = "# Demo"
) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Open README.md"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": tool_id, "name": name, "input": {"path": "R"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": result}],
        },
    ]


# --- top level -----------------------------------------------------------------------------


def test_model_and_stream_flags_r_o24() -> None:
    body = build(req())
    assert body["model"] == "up-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_r_o24_include_usage_off_and_non_stream() -> None:
    assert "stream_options" not in build(req(), d(include_usage=False))
    body = build(req(), stream=False)
    assert body["stream"] is False
    assert "stream_options" not in body


def test_r_o1_max_tokens_field_per_dialect() -> None:
    assert build(req(max_tokens=500))["max_tokens"] == 500
    body = build(req(max_tokens=500), PRESETS["openai"])
    assert body["max_completion_tokens"] == 500
    assert "max_tokens" not in body


def test_r_o2_clamped_to_output_limit_and_context() -> None:
    assert build(req(max_tokens=64000), max_output_tokens=8192)["max_tokens"] == 8192
    body = build(req(max_tokens=64000), context_window=32768, prompt_tokens=30000)
    assert body["max_tokens"] == 2768
    body = build(req(max_tokens=64000), context_window=1000, prompt_tokens=5000)
    assert body["max_tokens"] == 1


def test_r_o3_system_blocks_joined_into_one_leading_message() -> None:
    body = build(
        req(
            system=[
                {"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Be concise.", "cache_control": {"type": "ephemeral"}},
            ]
        )
    )
    assert body["messages"][0] == {
        "role": "system",
        "content": "You are Claude Code.\n\nBe concise.",
    }
    assert [m["role"] for m in body["messages"]].count("system") == 1


def test_r_o3_empty_system_omitted() -> None:
    assert build(req(system=""))["messages"][0]["role"] == "user"
    assert build(req(system=[]))["messages"][0]["role"] == "user"


def test_r_o3_billing_header_block_removed_and_prefix_stable() -> None:
    """The per-request billing block must not defeat upstream prefix caching."""

    def cc(version: str) -> MessagesRequest:
        return req(
            system=[
                {"type": "text", "text": f"x-anthropic-billing-header: cc_version={version};"},
                {"type": "text", "text": "You are a Claude agent."},
                {"type": "text", "text": "Main prompt."},
            ]
        )

    a, b = build(cc("2.1.197.abc")), build(cc("2.1.197.def"))
    assert a["messages"][0]["content"] == "You are a Claude agent.\n\nMain prompt."
    assert json.dumps(a) == json.dumps(b)


def test_r_o4_developer_role() -> None:
    body = build(req(system="Only French."), d(system_role="developer"))
    assert body["messages"][0] == {"role": "developer", "content": "Only French."}


def test_r_o5_mid_conversation_system_folds_into_user_message() -> None:
    """Claude Code's shape: a large system message right after the first user message."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>x"},
                {"type": "text", "text": "Do it"},
            ],
        },
        {"role": "system", "content": "Agents and skills."},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks"},
    ]
    body = build(req(system="Base.", messages=messages))
    assert body["messages"] == [
        {"role": "system", "content": "Base."},
        {
            "role": "user",
            "content": "<system-reminder>x\n\nDo it\n\n<system>\nAgents and skills.\n</system>",
        },
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks"},
    ]


def test_r_o5_mid_system_as_real_system_message_when_allowed() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": [{"type": "text", "text": "Now be brief."}]},
        {"role": "user", "content": "c"},
    ]
    body = build(req(messages=messages), d(mid_system="system"))
    assert body["messages"][2] == {"role": "system", "content": "Now be brief."}


def test_r_o5_mid_system_waits_for_tool_messages() -> None:
    messages = tool_turn()
    messages.insert(2, {"role": "system", "content": "Reminder."})
    body = build(req(messages=messages))
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert body["messages"][3]["content"] == "<system>\nReminder.\n</system>"
    body = build(req(messages=messages), d(mid_system="system"))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "system"]


def test_leading_system_role_messages_join_the_system_prompt() -> None:
    messages = [{"role": "system", "content": "Extra."}, {"role": "user", "content": "hi"}]
    body = build(req(system="Base.", messages=messages))
    assert body["messages"][0] == {"role": "system", "content": "Base.\n\nExtra."}
    assert body["messages"][1] == {"role": "user", "content": "hi"}


# --- messages --------------------------------------------------------------------------------


def test_r_o6_r_o7_assistant_text_and_tool_calls() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "\n\n"},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "Read",
                    "input": {"path": "é", "n": 1},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}],
        },
    ]
    assistant = build(req(messages=messages))["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"path":"é","n":1}'},
            }
        ],
    }


def test_q20_assistant_empty_content_as_empty_string() -> None:
    assistant = build(req(messages=tool_turn()), PRESETS["llamacpp"])["messages"][1]
    assert assistant["content"] == ""


def test_assistant_text_blocks_concatenated_without_separator() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
    ]
    assert build(req(messages=messages))["messages"][1] == {"role": "assistant", "content": "ab"}


def test_r_o9_empty_assistant_dropped() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
        {"role": "user", "content": "b"},
    ]
    body = build(req(messages=messages))
    assert body["messages"] == [{"role": "user", "content": "a\n\nb"}]


def test_r_o10_r_o11_worked_example_tool_results_image_and_text() -> None:
    """mapping.md §2.3 worked example."""
    messages = [
        {"role": "user", "content": "start"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_A", "name": "Shot", "input": {}},
                {"type": "tool_use", "id": "toolu_B", "name": "Ping", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go."},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_A",
                    "content": [
                        {"type": "text", "text": "screenshot taken"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBOR",
                            },
                        },
                    ],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_B",
                    "is_error": True,
                    "content": "timeout",
                },
            ],
        },
    ]
    out = build(req(messages=messages))["messages"][2:]
    assert out == [
        {
            "role": "tool",
            "tool_call_id": "toolu_A",
            "content": "screenshot taken\n[image attached in the next message]",
        },
        {"role": "tool", "tool_call_id": "toolu_B", "content": "Error: timeout"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("plain", "plain"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
        ([], ""),
        (None, ""),
        (
            [
                {
                    "type": "search_result",
                    "source": "https://x",
                    "title": "T",
                    "content": [{"type": "text", "text": "c"}],
                }
            ],
            "T (https://x)\nc",
        ),
        ([{"type": "tool_reference", "tool_name": "Grep"}], "Grep"),
        (
            [
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "body"},
                    "title": "Doc",
                }
            ],
            "Doc\nbody",
        ),
    ],
)
def test_r_o11_tool_result_content(content: Any, text: str) -> None:
    messages = tool_turn(result=content)
    if content is None:
        del messages[2]["content"][0]["content"]
    tool_msg = build(req(messages=messages))["messages"][2]
    assert tool_msg == {"role": "tool", "tool_call_id": "toolu_01", "content": text}


def test_r_o11_tool_result_image_without_image_support() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
    body = build(req(messages=tool_turn(result=[image])), d(supports_images=False))
    assert body["messages"][2]["content"] == "[image omitted: this model cannot view images]"
    assert len(body["messages"]) == 3


def test_r_o12_missing_tool_result_gets_placeholder() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "A", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "B", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "ok"}],
        },
        {"role": "assistant", "content": "next"},
    ]
    out = build(req(messages=messages))["messages"]
    assert out[2:5] == [
        {"role": "tool", "tool_call_id": "t2", "content": "ok"},
        {"role": "tool", "tool_call_id": "t1", "content": "(no result)"},
        {"role": "assistant", "content": "next"},
    ]


def test_r_o12_trailing_unanswered_calls_answered() -> None:
    messages = tool_turn()[:2]
    out = build(req(messages=messages))["messages"]
    assert out[-1] == {"role": "tool", "tool_call_id": "toolu_01", "content": "(no result)"}


def test_r_o13_orphan_tool_result_becomes_text() -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_gone", "content": "42"}],
        },
    ]
    out = build(req(messages=messages))["messages"]
    assert out == [{"role": "user", "content": "Tool result (toolu_gone): 42"}]


def test_r_o14_consecutive_messages_merged() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "A", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]},
    ]
    out = build(req(messages=messages))["messages"]
    assert out[0] == {"role": "user", "content": "a\n\nb"}
    assert out[1]["content"] == "c"
    assert out[1]["tool_calls"][0]["id"] == "t"
    assert out[2] == {"role": "tool", "tool_call_id": "t", "content": "r"}


def test_r_o15_history_flattened_without_tools_when_flagged() -> None:
    out = build(req(messages=tool_turn()), d(needs_tools_for_history=True))["messages"]
    assert out == [
        {"role": "user", "content": "Open README.md"},
        {"role": "assistant", "content": '[called Read({"path":"R"})]'},
        {"role": "user", "content": "[result: # Demo]"},
    ]
    # with tools offered the history stays structured
    out = build(req(messages=tool_turn(), tools=[READ_TOOL]), d(needs_tools_for_history=True))
    assert out["messages"][1]["tool_calls"]


def test_r_x12_mistral_ids_consistent() -> None:
    out = build(req(messages=tool_turn("toolu_01ABC")), d(tool_id_style="mistral9"))["messages"]
    call_id = out[1]["tool_calls"][0]["id"]
    assert call_id == mistral_tool_id("toolu_01ABC")
    assert len(call_id) == 9
    assert call_id.isalnum()
    assert out[2]["tool_call_id"] == call_id


# --- content parts ---------------------------------------------------------------------------


def user_parts(blocks: list[dict[str, Any]], dialect: OpenAIDialect = GENERIC) -> Any:
    return build(req(messages=[{"role": "user", "content": blocks}]), dialect)["messages"][0][
        "content"
    ]


def test_r_o16_images_base64_and_url() -> None:
    parts = user_parts(
        [
            {"type": "text", "text": "What?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"},
            },
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        ]
    )
    assert parts == [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
    ]


def test_r_o16_image_file_id_is_a_400() -> None:
    with pytest.raises(RelayError) as info:
        user_parts([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}])
    assert info.value.status == 400
    assert "file_id" in info.value.message


PDF = {
    "type": "document",
    "title": "Spec",
    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
}


def test_r_o16_pdf_as_file_part() -> None:
    parts = user_parts([PDF], PRESETS["openai"])
    assert parts == [
        {
            "type": "file",
            "file": {"filename": "Spec", "file_data": "data:application/pdf;base64,JVBE"},
        }
    ]


def test_r_o16_pdf_as_placeholder_text() -> None:
    assert "cannot read PDF" in user_parts([PDF], d(document_support="text"))


def test_r_o16_pdf_rejected_clearly() -> None:
    with pytest.raises(RelayError) as info:
        user_parts([PDF], d(document_support="reject"))
    assert info.value.type == "invalid_request_error"
    assert "PDF" in info.value.message


def test_r_o16_document_text_and_content_sources() -> None:
    text_doc = {
        "type": "document",
        "title": "T",
        "context": "C",
        "source": {"type": "text", "media_type": "text/plain", "data": "body"},
    }
    content_doc = {
        "type": "document",
        "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]},
    }
    assert user_parts([text_doc, content_doc]) == "T\nC\nbody\n\ninner"


def test_r_o16_search_result_and_dropped_blocks() -> None:
    blocks = [
        {
            "type": "search_result",
            "source": "https://s",
            "title": "S",
            "content": [{"type": "text", "text": "x"}],
        },
        {"type": "container_upload", "file_id": "f"},
        {"type": "text", "text": "q", "citations": [{"type": "char_location"}]},
    ]
    assert user_parts(blocks) == "S (https://s)\nx\n\nq"


def test_mark_cache_control_keeps_breakpoints() -> None:
    dialect = d(mark_cache_control=True)
    body = build(
        req(
            system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "U", "cache_control": {"type": "ephemeral"}}
                    ],
                }
            ],
        ),
        dialect,
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "U", "cache_control": {"type": "ephemeral"}}
    ]


# --- tools ------------------------------------------------------------------------------------


def test_r_o17_custom_tool_converted() -> None:
    body = build(req(tools=[READ_TOOL, {"name": "Bare", "input_schema": {"type": "object"}}]))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Read a file",
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "required": ["path"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {"name": "Bare", "description": "", "parameters": {"type": "object"}},
        },
    ]
    assert "$schema" in READ_TOOL["input_schema"]  # the request is not mutated
    kept = build(req(tools=[READ_TOOL]), d(strip_schema_dollar_schema=False))
    assert "$schema" in kept["tools"][0]["function"]["parameters"]


def test_r_o18_long_tool_names_shortened_everywhere() -> None:
    long_name = "mcp__a-very-long-server-name__" + "tool_" * 10
    bad_name = "my.tool name"
    tools = [
        {"name": long_name, "input_schema": {"type": "object"}},
        {"name": bad_name, "input_schema": {"type": "object"}},
    ]
    messages = tool_turn(name=long_name)
    body = build(
        req(tools=tools, messages=messages, tool_choice={"type": "tool", "name": long_name})
    )
    short = upstream_tool_name(long_name)
    assert len(short) <= 64
    assert body["tools"][0]["function"]["name"] == short
    assert body["tools"][1]["function"]["name"] == upstream_tool_name(bad_name)
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert body["tool_choice"] == {"type": "function", "function": {"name": short}}
    names = ToolNameMap.from_request(req(tools=tools, messages=messages))
    assert names.client(short) == long_name
    assert names.client("Other") == "Other"
    assert upstream_tool_name("mcp__server__tool") == "mcp__server__tool"


def test_r_o19_anthropic_client_tools_synthesized_or_dropped() -> None:
    tools = [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    body = build(req(tools=tools))
    names = [t["function"]["name"] for t in body["tools"]]
    assert names == ["bash", "str_replace_based_edit_tool"]
    assert "command" in body["tools"][0]["function"]["parameters"]["properties"]
    assert "tools" not in build(req(tools=tools), d(synthesize_client_tools=False))


def test_r_o20_r_o21_server_tools_dropped_and_tool_fields_omitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    with caplog.at_level(logging.INFO, logger="txrelay.protocol.openai"):
        body = build(
            req(tools=tools, tool_choice={"type": "any", "disable_parallel_tool_use": True})
        )
    assert "tools" not in body
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body
    assert "web_search" in caplog.text


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice_table(choice: dict[str, Any], expected: Any) -> None:
    body = build(req(tools=[READ_TOOL], tool_choice=choice))
    assert body["tool_choice"] == expected
    assert "parallel_tool_calls" not in body


def test_tool_choice_absent() -> None:
    assert "tool_choice" not in build(req(tools=[READ_TOOL]))


def test_tool_choice_none_unsupported_omits_tools() -> None:
    body = build(
        req(tools=[READ_TOOL], tool_choice={"type": "none"}), d(supports_tool_choice_none=False)
    )
    assert "tools" not in body
    assert "tool_choice" not in body


def test_forced_tool_as_required_for_llama_server() -> None:
    other = {"name": "Other", "input_schema": {"type": "object"}}
    body = build(
        req(tools=[READ_TOOL, other], tool_choice={"type": "tool", "name": "Other"}),
        PRESETS["llamacpp"],
    )
    assert body["tool_choice"] == "required"
    assert [t["function"]["name"] for t in body["tools"]] == ["Other"]


def test_r_o22_disable_parallel_tool_use() -> None:
    body = build(
        req(tools=[READ_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    )
    assert body["parallel_tool_calls"] is False
    body = build(
        req(tools=[READ_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
        d(supports_parallel_tool_calls=False),
    )
    assert "parallel_tool_calls" not in body


# --- reasoning --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 2000}, None, "low"),
        ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
        ({"type": "adaptive"}, None, None),
        ({"type": "adaptive"}, "max", "high"),
        ({"type": "disabled"}, None, None),
        (None, "low", "low"),
    ],
)
def test_r_o23_openai_reasoning_effort(thinking: Any, effort: Any, expected: Any) -> None:
    dialect = attrs.evolve(PRESETS["openai"], reasoning_control="openai")
    body = build(
        req(thinking=thinking, output_config={"effort": effort} if effort else None), dialect
    )
    assert body.get("reasoning_effort") == expected


def test_r_o23_openai_disabled_uses_none_when_accepted() -> None:
    dialect = d(
        reasoning_control="openai", reasoning_efforts=("none", "low", "medium", "high", "xhigh")
    )
    assert build(req(thinking={"type": "disabled"}), dialect)["reasoning_effort"] == "none"
    assert build(req(output_config={"effort": "max"}), dialect)["reasoning_effort"] == "xhigh"


def test_r_o23_no_controls_without_dialect_support() -> None:
    body = build(
        req(thinking={"type": "enabled", "budget_tokens": 5000}, output_config={"effort": "high"})
    )
    assert not {"reasoning_effort", "thinking", "reasoning", "chat_template_kwargs"} & body.keys()


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 8000}, None, ({"type": "enabled"}, "high")),
        ({"type": "enabled", "budget_tokens": 1024}, None, ({"type": "enabled"}, "low")),
        ({"type": "adaptive"}, "max", ({"type": "enabled"}, "max")),
        ({"type": "adaptive"}, None, ({"type": "enabled"}, None)),
        ({"type": "disabled"}, None, ({"type": "disabled"}, None)),
        (None, None, ({"type": "disabled"}, None)),
    ],
)
def test_r_o23_deepseek(thinking: Any, effort: Any, expected: Any) -> None:
    body = build(
        req(thinking=thinking, output_config={"effort": effort} if effort else None),
        PRESETS["deepseek"],
    )
    assert (body["thinking"], body.get("reasoning_effort")) == expected


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 8000}, None, {"max_tokens": 8000}),
        ({"type": "adaptive"}, None, {"enabled": True}),
        ({"type": "adaptive"}, "high", {"effort": "high"}),
        ({"type": "disabled"}, None, {"enabled": False}),
        ({"type": "adaptive", "display": "omitted"}, None, {"enabled": True, "exclude": True}),
        (None, None, None),
    ],
)
def test_r_o23_openrouter(thinking: Any, effort: Any, expected: Any) -> None:
    body = build(
        req(thinking=thinking, output_config={"effort": effort} if effort else None),
        PRESETS["openrouter"],
    )
    assert body.get("reasoning") == expected


def test_r_o23_chat_template_kwargs_merge_with_extra_body() -> None:
    dialect = d(
        reasoning_control="chat_template",
        extra_body={"chat_template_kwargs": {"x": 1}, "top_k": 20},
    )
    body = build(req(thinking={"type": "adaptive"}), dialect)
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "x": 1}
    assert body["top_k"] == 20
    assert build(req(), dialect)["chat_template_kwargs"]["enable_thinking"] is False


def test_r_o8_r_t1_deepseek_reasoning_content_replay() -> None:
    """§2.8 / §14 item 15: reasoning_content on every assistant message with tool calls."""
    messages = [
        {"role": "user", "content": "Open README.md"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need to read it.", "signature": "txr1.oai.k3J9"},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "Read",
                    "input": {"path": "README.md"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "# Demo"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_02", "name": "Read", "input": {"path": "b"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_02", "content": "B"}],
        },
        {"role": "assistant", "content": "Plain answer."},
        {"role": "user", "content": "more"},
    ]
    body = build(
        req(
            system=[
                {"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Be concise."},
            ],
            thinking={"type": "enabled", "budget_tokens": 8000},
            tools=[{k: v for k, v in READ_TOOL.items() if k != "cache_control"}],
            messages=messages,
            max_tokens=32000,
        ),
        PRESETS["deepseek"],
    )
    out = body["messages"]
    assert out[0] == {"role": "system", "content": "You are Claude Code.\n\nBe concise."}
    assert out[2]["reasoning_content"] == "Need to read it."
    assert out[2]["content"] is None
    assert out[4]["reasoning_content"] == ""
    assert "reasoning_content" not in out[6]
    assert body["thinking"] == {"type": "enabled"}
    assert body["max_tokens"] == 32000


def test_r_t1_openai_drops_thinking() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "t", "signature": "sig"},
                {"type": "text", "text": "a"},
            ],
        },
    ]
    assert build(req(messages=messages), PRESETS["openai"])["messages"][1] == {
        "role": "assistant",
        "content": "a",
    }
    assert build(req(messages=messages), PRESETS["vllm"])["messages"][1]["reasoning"] == "t"


def test_r_t1_openrouter_reasoning_details_rebuilt() -> None:
    item = {
        "type": "reasoning.text",
        "signature": "SIG",
        "format": "anthropic-claude-v1",
        "index": 0,
    }
    encrypted = {"type": "reasoning.encrypted", "data": "ENC", "format": "anthropic-claude-v1"}
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": encode_orx(item)},
                {"type": "redacted_thinking", "data": encode_orx(encrypted)},
                {"type": "text", "text": "a"},
            ],
        },
    ]
    out = build(req(messages=messages), PRESETS["openrouter"])["messages"][1]
    assert out["reasoning_details"] == [{**item, "text": "Let me think."}, encrypted]
    plain = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "T", "signature": "x"},
                {"type": "text", "text": "a"},
            ],
        },
    ]
    assert build(req(messages=plain), PRESETS["openrouter"])["messages"][1]["reasoning"] == "T"


# --- sampling and the rest ----------------------------------------------------------------------


def test_sampling_parameters_per_dialect() -> None:
    r = req(temperature=0.2, top_p=0.9, top_k=40)
    body = build(r)
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    assert "top_k" not in body
    assert build(r, PRESETS["vllm"])["top_k"] == 40
    body = build(r, d(supports_temperature=False, supports_top_p=False))
    assert "temperature" not in body
    assert "top_p" not in body


def test_stop_sequences_truncated_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    r = req(stop_sequences=["a", "b", "c", "d", "e", ""])
    with caplog.at_level(logging.INFO):
        assert build(r)["stop"] == ["a", "b", "c", "d"]
    assert "stop sequences" in caplog.text
    assert "stop" not in build(r, d(supports_stop=False))


def test_metadata_user_id_hashed() -> None:
    user = json.dumps({"device_id": "f" * 64, "account_uuid": "", "session_id": "s"})
    body = build(req(metadata={"user_id": user}), PRESETS["openai"])
    assert len(body["user"]) == 64
    assert user not in json.dumps(body)
    assert "user" not in build(req(metadata={"user_id": user}))


def test_output_config_format_to_response_format() -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    body = build(req(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert "response_format" not in build(
        req(output_config={"format": {"type": "json_schema", "schema": schema}}),
        PRESETS["deepseek"],
    )


def test_r_x3_unknown_fields_dropped(caplog: pytest.LogCaptureFixture) -> None:
    r = req(
        context_management={"edits": []},
        service_tier="auto",
        speed="fast",
        mcp_servers=[{"type": "url", "url": "https://m", "name": "m"}],
        cache_control={"type": "ephemeral"},
    )
    with caplog.at_level(logging.WARNING):
        body = build(r)
    assert set(body) == {"model", "messages", "max_tokens", "stream", "stream_options"}
    assert "mcp_servers" in caplog.text


def test_claude_code_shaped_request_is_deterministic() -> None:
    """A synthetic request of Claude Code's shape (claude-code.md §4)."""
    tools = [
        {
            "name": name,
            "description": f"The {name} tool.",
            "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"x": {"type": "string"}},
                "additionalProperties": False,
            },
        }
        for name in ("Agent", "Bash", "Edit", "Read", "Write", "mcp__srv__do_thing")
    ]
    body_json = {
        "model": "claude-opus-4-8",
        "max_tokens": 64000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": json.dumps({"device_id": "0" * 64, "session_id": "u"})},
        "system": [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.197.a1b; "
                "cc_entrypoint=sdk-cli;",
            },
            {
                "type": "text",
                "text": "You are a Claude agent.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Main prompt " * 50, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>today</system-reminder>"},
                    {
                        "type": "text",
                        "text": "Write hello.py",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
            {"role": "system", "content": "Agent types and skills " * 40},
        ],
    }
    first = build(request_from_json(body_json), PRESETS["deepseek"], max_output_tokens=32768)
    body_json["system"][0]["text"] = "x-anthropic-billing-header: cc_version=2.1.197.zzz;"
    second = build(request_from_json(body_json), PRESETS["deepseek"], max_output_tokens=32768)
    assert json.dumps(first) == json.dumps(second)
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["max_tokens"] == 32768
    assert len(first["tools"]) == 6
    assert all("$schema" not in t["function"]["parameters"] for t in first["tools"])
    assert first["reasoning_effort"] == "high"


# --- dialect ------------------------------------------------------------------------------------


def test_dialect_structures_from_toml_shaped_config() -> None:
    """Config builds dialects with the project's strict cattrs converter."""
    from txrelay.protocol.structure import make_converter

    converter = make_converter(forbid_extra_keys=True)
    dialect = converter.structure(
        {
            "max_tokens_field": "max_completion_tokens",
            "reasoning_input": "reasoning",
            "reasoning_efforts": ["low", "high"],
            "extra_body": {"top_k": 20, "chat_template_kwargs": {"a": 1}},
            "tool_id_style": None,
        },
        OpenAIDialect,
    )
    assert dialect.reasoning_efforts == ("low", "high")
    assert dialect.extra_body["top_k"] == 20
    with pytest.raises(Exception, match="OpenAIDialect"):
        converter.structure({"tool_streaming": "sometimes"}, OpenAIDialect)


def test_presets() -> None:
    assert set(PRESETS) == {
        "openai",
        "deepseek",
        "vllm",
        "llamacpp",
        "llama-cpp-python",
        "openrouter",
        "generic",
    }
    assert PRESETS["generic"] == OpenAIDialect()
    assert PRESETS["openai"].max_tokens_field == "max_completion_tokens"
    assert not PRESETS["openai"].supports_top_k
    assert PRESETS["deepseek"].requires_reasoning_content_on_tool_calls
    assert PRESETS["openrouter"].reasoning_input == "reasoning_details"
    for dialect in PRESETS.values():
        hash(dialect)


def test_r_o5_deferred_system_text_lands_before_the_next_assistant() -> None:
    messages = [*tool_turn()[:2], {"role": "system", "content": "Note."}]
    messages.append({"role": "assistant", "content": "go on"})
    out = build(req(messages=messages))["messages"]
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "user", "assistant"]
    assert out[2]["content"] == "(no result)"
    assert out[3]["content"] == "<system>\nNote.\n</system>"
