"""
Hand-written Gemini ``streamGenerateContent?alt=sse`` bodies, one per quirk of gemini.md §4 to §6
(no captured vendor data), and what the translated Anthropic message must look like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from txrelay.protocol.gemini import GeminiToolNames

HERE = Path(__file__).parent
#: Client tool names the fixture streams' (mapped) function names come from.
CLIENT_TOOLS = ("fs read!", "Grep", "Read", "Bash", "get_weather")


@attrs.frozen
class Expect:
    """The expected outcome of translating one fixture stream."""

    #: ``("text", str)``, ``("thinking", str)``, ``("tool_use", name, input)``.
    blocks: tuple[tuple[Any, ...], ...] = ()
    stop_reason: str | None = "end_turn"
    #: Usage fields that must match in the final message (subset check).
    usage: dict[str, Any] = attrs.field(factory=dict)
    #: The error type when the stream must end with an ``error`` event instead.
    error: str | None = None
    error_message: str | None = None


def tool(name: str, value: dict[str, Any]) -> tuple[Any, ...]:
    """A tool_use block expectation."""
    return ("tool_use", name, value)


def names() -> GeminiToolNames:
    """The name map the fixture streams were written against."""
    return GeminiToolNames.from_names(CLIENT_TOOLS)


FIXTURES: dict[str, Expect] = {
    # gemini.md §5 example / mapping.md §7 worked example.
    "weather_tool": Expect(
        blocks=(
            ("thinking", "**Planning** I need the weather…"),
            ("text", "Checking Paris."),
            ("thinking", ""),
            tool("get_weather", {"city": "Paris"}),
        ),
        stop_reason="tool_use",
        usage={"input_tokens": 812, "output_tokens": 114,
               "output_tokens_details": {"thinking_tokens": 96}},
    ),
    # CRLF framing, U+2028 inside a JSON string, cached prompt, signature on an empty text part.
    "text_crlf": Expect(
        blocks=(("text", "Hello, wörld — 🌍\u2028done."),),
        usage={"input_tokens": 52, "cache_read_input_tokens": 2048,
               "cache_creation_input_tokens": 0, "output_tokens": 9},
    ),
    # Parallel calls: only the first is signed; one Gemini id; a mapped name restored.
    "parallel_calls": Expect(
        blocks=(
            ("thinking", ""),
            tool("fs read!", {"path": "a.py"}),
            tool("Grep", {"pattern": "TODO", "glob": "*.py"}),
        ),
        stop_reason="tool_use",
        usage={"input_tokens": 300, "output_tokens": 52},
    ),
    # Thought text over two chunks, its signature on a trailing text-less thought part.
    "trailing_thought_signature": Expect(
        blocks=(("thinking", "Thinking about the answer."), ("text", "\n\nForty-two.")),
        usage={"input_tokens": 50, "output_tokens": 23},
    ),
    "safety_stop": Expect(
        blocks=(("text", "Here is how to\n\n[gemini stopped the response: SAFETY]"),),
        stop_reason="refusal",
        usage={"input_tokens": 20, "output_tokens": 4},
    ),
    "recitation": Expect(
        blocks=(("text", "[gemini stopped the response: RECITATION: The response resembles "
                 "copyrighted material.]"),),
        stop_reason="refusal",
    ),
    "prompt_blocked": Expect(
        blocks=(("text", "[gemini blocked the prompt: PROHIBITED_CONTENT]"),),
        stop_reason="refusal",
        usage={"input_tokens": 31},
    ),
    "max_tokens_thinking": Expect(
        blocks=(("thinking", "Let me plan a long essay"),),
        stop_reason="max_tokens",
        usage={"input_tokens": 10, "output_tokens": 256},
    ),
    "no_finish": Expect(error="api_error", error_message="ended unexpectedly"),
    "error_mid_stream": Expect(error="overloaded_error", error_message="overloaded"),
    "array_error": Expect(error="rate_limit_error", error_message="exhausted"),
    "hostile_shapes": Expect(
        blocks=(("text", "kept as text"), tool("Bash", {})),
        stop_reason="tool_use",
        usage={"input_tokens": 100, "output_tokens": 7},
    ),
    "hostile_scalar": Expect(error="api_error", error_message="not an object"),
    "malformed_call": Expect(
        blocks=(("text", "[upstream returned a malformed tool call]"),),
        usage={"input_tokens": 90},
    ),
    "missing_signature": Expect(
        error="invalid_request_error", error_message="MISSING_THOUGHT_SIGNATURE"
    ),
    # Cumulative usage (overwrite, never add), tool-use prompt tokens, ``data:`` without a
    # space, a comment line, no blank line after the last event.
    "running_usage": Expect(
        blocks=(("text", "One, two, three."),),
        usage={"input_tokens": 450, "cache_read_input_tokens": 600, "output_tokens": 46,
               "output_tokens_details": {"thinking_tokens": 40}},
    ),
    "code_execution": Expect(
        blocks=(("text", "Computing.\n```python\nprint(6*7)\n```\n\n```\n42\n\n```\n"),),
        usage={"output_tokens": 20},
    ),
    "text_after_call": Expect(
        blocks=(("thinking", "Plan"), tool("Read", {}), ("text", "Reading now.")),
        stop_reason="tool_use",
    ),
}


def load(name: str) -> bytes:
    """The bytes of fixture ``name``."""
    return (HERE / f"{name}.sse").read_bytes()
