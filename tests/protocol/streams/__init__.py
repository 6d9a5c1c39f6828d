"""
Synthetic upstream streams in the shape of real OpenAI-compatible servers, and what the
translated Anthropic message must look like.

Each ``.sse`` file is written by hand after the server behaviour described in
openai-chat.md §10 and "Observed on real servers" (no captured vendor data). :data:`FIXTURES`
maps the file name to its :class:`Expect`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from txrelay.protocol.openai import PRESETS, OpenAIDialect

HERE = Path(__file__).parent


@attrs.frozen
class Expect:
    """The expected outcome of translating one fixture stream."""

    #: ``("text", str)``, ``("thinking", str)``, ``("tool_use", name, input)``,
    #: ``("redacted_thinking",)``.
    blocks: tuple[tuple[Any, ...], ...] = ()
    stop_reason: str | None = "end_turn"
    stop_sequence: str | None = None
    #: Usage fields that must match in the final message (subset check).
    usage: dict[str, Any] = attrs.field(factory=dict)
    #: The error type when the stream must end with an ``error`` event instead.
    error: str | None = None
    error_message: str | None = None
    dialect: OpenAIDialect = PRESETS["generic"]
    stop_sequences: tuple[str, ...] = ()
    #: Live and complete-then-emit tool modes give different (both correct) messages.
    mode_sensitive: bool = False


def tool(name: str, value: dict[str, Any]) -> tuple[Any, ...]:
    """A tool_use block expectation."""
    return ("tool_use", name, value)


FIXTURES: dict[str, Expect] = {
    "openai_text": Expect(
        blocks=(("text", "Hello, wörld — 🌍\u2028done."),),
        usage={
            "input_tokens": 52,
            "cache_read_input_tokens": 2048,
            "cache_creation_input_tokens": 0,
            "output_tokens": 9,
        },
        dialect=PRESETS["openai"],
    ),
    "openai_parallel_tools": Expect(
        blocks=(
            tool("get_weather", {"city": "Paris", "days": 3}),
            tool("get_time", {"tz": "Europe/Paris"}),
        ),
        stop_reason="tool_use",
        usage={"input_tokens": 82, "output_tokens": 41},
        dialect=PRESETS["openai"],
    ),
    "deepseek_reasoning": Expect(
        blocks=(
            ("thinking", "The user wants the README."),
            ("text", "\n\nOpening it."),
            tool("Read", {"file_path": "/repo/README.md"}),
        ),
        stop_reason="tool_use",
        usage={
            "input_tokens": 136,
            "cache_read_input_tokens": 4864,
            "cache_creation_input_tokens": 0,
            "output_tokens": 57,
            "output_tokens_details": {"thinking_tokens": 12},
        },
        dialect=PRESETS["deepseek"],
    ),
    "vllm_reasoning_stop": Expect(
        blocks=(("thinking", "Count to three.\n"), ("text", "1, 2, 3")),
        stop_reason="stop_sequence",
        stop_sequence="STOP!",
        usage={"input_tokens": 40, "output_tokens": 10},
        dialect=PRESETS["vllm"],
        stop_sequences=("END", "STOP!"),
    ),
    "llamacpp_keepalive": Expect(
        blocks=(tool("Bash", {"command": "ls -la", "timeout": 1500.0}),),
        stop_reason="tool_use",
        usage={"input_tokens": 300, "output_tokens": 20},
        dialect=PRESETS["llamacpp"],
    ),
    "llamacpp_error_line": Expect(error="api_error", error_message="failed to decode"),
    "llama_cpp_python_repeat": Expect(
        blocks=(tool("Write", {"file_path": "/tmp/a.txt", "content": "line one\nline two"}),),
        stop_reason="tool_use",
        usage={"input_tokens": 100, "cache_read_input_tokens": 0},
    ),
    "openrouter_reasoning": Expect(
        blocks=(("thinking", "Let me think."), ("redacted_thinking",), ("text", "Answer: 42")),
        usage={
            "input_tokens": 100,
            "cache_read_input_tokens": 600,
            "cache_creation_input_tokens": 300,
            "output_tokens": 30,
        },
        dialect=PRESETS["openrouter"],
    ),
    "openrouter_error": Expect(
        error="api_error", error_message="Provider disconnected", dialect=PRESETS["openrouter"]
    ),
    "ollama_whole_call": Expect(
        blocks=(tool("get_weather", {"city": "Paris", "unit": "c"}), tool("get_time", {})),
        stop_reason="tool_use",
        usage={"input_tokens": 120, "output_tokens": 25},
    ),
    "index_missing": Expect(
        blocks=(
            tool("Glob", {"pattern": "**/*.py"}),
            tool("Grep", {"pattern": "TODO"}),
            tool("Grep", {"pattern": "FIXME"}),
        ),
        stop_reason="tool_use",
    ),
    "index_reuse": Expect(
        blocks=(tool("Read", {"path": "a.py"}), tool("Read", {"path": "b.py"})),
        stop_reason="tool_use",
    ),
    "cumulative_args": Expect(
        blocks=(tool("Edit", {"old": "x", "new": "y"}),),
        stop_reason="tool_use",
        usage={"input_tokens": 10, "output_tokens": 12},
        dialect=OpenAIDialect(cumulative_args=True),
    ),
    "think_tags": Expect(
        blocks=(
            ("thinking", "The user greets me."),
            ("text", "Hi there! <think> is literal here."),
        ),
        dialect=OpenAIDialect(think_tags=True),
    ),
    "truncated": Expect(error="api_error", error_message="ended unexpectedly"),
    "truncated_mid_json": Expect(error="api_error", error_message="invalid JSON"),
    "interleaved_tools": Expect(
        blocks=(
            ("thinking", "Need the file."),
            ("text", "\n\nReading it."),
            tool("Read", {"path": "a.py"}),
            tool("Grep", {"pattern": "TODO"}),
        ),
        stop_reason="tool_use",
        usage={"input_tokens": 176, "cache_read_input_tokens": 1024, "output_tokens": 60},
        dialect=PRESETS["deepseek"],
    ),
    "invalid_args": Expect(
        blocks=(
            tool("Read", {"path": "a.py", "recursive": True}),
            tool("Grep", {"pattern": "x"}),
            tool("Bash", {"command": "ls"}),
            tool("Ask", {"_invalid_arguments": "not json at all"}),
            tool("List", {"value": [1, 2]}),
            tool("Flag", {"on": True, "n": None}),
        ),
        stop_reason="tool_use",
    ),
    "length_truncated_tool": Expect(
        blocks=(
            ("text", "Writing the file."),
            tool("Write", {"file_path": "/tmp/x.py", "content": "def f():\n    return 12\n"}),
        ),
        stop_reason="max_tokens",
        usage={"output_tokens": 4096},
        mode_sensitive=True,  # complete mode repairs the raw text (json_repair keeps "\\u00")
    ),
    "vllm_object_error": Expect(error="overloaded_error", dialect=PRESETS["vllm"]),
    "deepseek_insufficient": Expect(error="overloaded_error", dialect=PRESETS["deepseek"]),
    "refusal": Expect(blocks=(("text", "I can't help with that."),), stop_reason="refusal"),
    "name_late": Expect(
        blocks=(("text", "Let me look."), tool("Search", {"q": "cats"})), stop_reason="tool_use"
    ),
    "text_after_tools": Expect(
        blocks=(tool("Bash", {"command": "make"}), ("text", "\nI will run make.")),
        stop_reason="tool_use",
        mode_sensitive=True,
    ),
    # Issue 7.11: [DONE] without a finish_reason is a cut stream, not an end_turn (was Q9).
    "done_without_finish": Expect(error="api_error", error_message="without a finish reason"),
    # ... unless the dialect says finish reasons are optional and the usage chunk arrived,
    "finish_optional_usage": Expect(
        blocks=(("text", "All done."),),
        usage={"input_tokens": 30, "output_tokens": 3},
        dialect=OpenAIDialect(finish_reason_optional=True),
    ),
    # ... and never with tool-call arguments still open (they used to be "repaired").
    "cut_tool_args": Expect(
        error="api_error",
        error_message="in the middle of a tool call's arguments",
        dialect=OpenAIDialect(finish_reason_optional=True),
    ),
    "whitespace_before_tool": Expect(blocks=(tool("Read", {"path": "x"}),), stop_reason="tool_use"),
    "garbage_line": Expect(error="api_error", error_message="malformed stream line"),
    "data_error": Expect(
        error="invalid_request_error",
        error_message="prompt is too long: 9000 tokens > 8192 maximum",
    ),
}


def load(name: str) -> bytes:
    """The bytes of fixture ``name``."""
    return (HERE / f"{name}.sse").read_bytes()
