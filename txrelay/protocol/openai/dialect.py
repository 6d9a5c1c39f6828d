"""
Per-upstream switches for the OpenAI Chat Completions translation.

OpenAI-compatible servers differ in many small ways (openai-chat.md §10). Every difference a
mapping.md rule depends on is one field of :class:`OpenAIDialect`; the defaults suit a generic
compatible server (vLLM, SGLang, LM Studio, llama.cpp, gateways). :data:`PRESETS` holds tuned
starting points; config picks a preset and overrides fields (structured with cattrs, so field
types stay plain: str, int, bool, Literal, tuple[str, ...], dict[str, Any], X | None).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

MaxTokensField = Literal["max_tokens", "max_completion_tokens"]
ReasoningInput = Literal["reasoning_content", "reasoning", "reasoning_details"]
ReasoningControl = Literal["openai", "deepseek", "openrouter", "chat_template"]


@attrs.frozen
class OpenAIDialect:
    """Everything that varies between OpenAI-compatible upstreams (rule ids in comments)."""

    # --- request shape -------------------------------------------------------------------
    #: Name of the output-limit field (R-O1): OpenAI wants ``max_completion_tokens``.
    max_tokens_field: MaxTokensField = "max_tokens"
    #: Role of the leading system message (R-O3/R-O4).
    system_role: Literal["system", "developer"] = "system"
    #: What a mid-conversation ``role:"system"`` message becomes (R-O5).
    mid_system: Literal["user", "system"] = "user"
    #: Wrapper for a mid-conversation system text sent as a user message; ``{text}`` is replaced.
    mid_system_template: str = "<system>\n{text}\n</system>"
    #: Assistant ``content`` when there is no text (Q20): JSON ``null`` or ``""``.
    assistant_empty_content: Literal["null", "empty_string"] = "null"
    #: Rewrite tool-call ids for upstreams with id rules (R-X12, Q21): Mistral's 9 alphanumerics.
    tool_id_style: Literal["mistral9"] | None = None
    #: Send ``stream_options.include_usage`` on streaming requests (R-O24, Q12).
    include_usage: bool = True
    #: The upstream accepts ``stop`` (Q23).
    supports_stop: bool = True
    #: At most this many stop sequences are sent; the rest are dropped with a log line.
    max_stop_sequences: int = 4
    #: The upstream accepts ``temperature`` (OpenAI reasoning models do not, Q23).
    supports_temperature: bool = True
    #: The upstream accepts ``top_p``.
    supports_top_p: bool = True
    #: The upstream accepts ``top_k`` (never api.openai.com).
    supports_top_k: bool = False
    #: The upstream understands ``tool_choice:"none"``; otherwise tools are left out (§2.5).
    supports_tool_choice_none: bool = True
    #: Send a forced tool as ``"required"`` with only that tool offered (llama-server ignores
    #: a forced ``tool_choice`` object).
    forced_tool_as_required: bool = False
    #: The upstream enforces ``tool_choice:"required"``. When it does not (llama-cpp-python
    #: accepts the value and ignores it), Anthropic ``any`` becomes the named tool when only
    #: one tool is offered (a forced tool is grammar-constrained there) and ``"auto"``
    #: otherwise: the model is then free not to call a tool.
    supports_tool_choice_required: bool = True
    #: Send ``tool_choice:"auto"`` when tools go out and the client set no ``tool_choice``
    #: (llama-cpp-python's ``chatml-function-calling`` format ignores tools without it).
    explicit_tool_choice_auto: bool = False
    #: The upstream accepts ``parallel_tool_calls`` (R-O22).
    supports_parallel_tool_calls: bool = True
    #: Remove ``$schema`` from the root of tool schemas (R-O17).
    strip_schema_dollar_schema: bool = True
    #: Synthesize schemas for Anthropic-defined client tools (bash, text editor, memory,
    #: computer) instead of dropping them (R-O19).
    synthesize_client_tools: bool = True
    #: PDF documents (R-O16): OpenAI ``file`` parts, a placeholder text, or a 400.
    document_support: Literal["file", "text", "reject"] = "text"
    #: The model accepts ``image_url`` parts; otherwise images become a placeholder text.
    supports_images: bool = True
    #: The upstream accepts ``response_format`` json_schema (``output_config.format``).
    supports_response_format: bool = True
    #: Flatten tool history to text when no tools are sent (R-O15).
    needs_tools_for_history: bool = False
    #: Where a hash of ``metadata.user_id`` goes; ``None`` drops it (§2.1).
    user_field: Literal["user", "safety_identifier"] | None = None
    #: Copy ``cache_control`` onto text parts (OpenRouter with Anthropic-backed models).
    mark_cache_control: bool = False
    #: Vendor fields merged into every request (one level deep for objects); wins on conflict.
    extra_body: dict[str, Any] = attrs.field(factory=dict, hash=False)

    # --- reasoning -------------------------------------------------------------------------
    #: Field that carries replayed thinking on assistant messages (R-O8, R-T1); ``None`` drops it.
    reasoning_input: ReasoningInput | None = None
    #: Which reasoning controls the model takes (R-O23); ``None`` sends none.
    reasoning_control: ReasoningControl | None = None
    #: ``reasoning_effort`` values the model accepts (``openai`` control), weakest first.
    reasoning_efforts: tuple[str, ...] = ("low", "medium", "high")
    #: Thinking budgets below this map to effort ``low`` (R-O23).
    effort_low_below: int = 4096
    #: Thinking budgets below this (and ≥ ``effort_low_below``) map to ``medium``.
    effort_medium_below: int = 16384
    #: DeepSeek thinking mode: every assistant message with tool calls carries
    #: ``reasoning_content`` (``""`` when there was no thinking) — otherwise a 400.
    requires_reasoning_content_on_tool_calls: bool = False

    # --- response handling -----------------------------------------------------------------
    #: Keep the upstream tool-call id when it is a safe, unique id (R-X11); else mint ``toolu_``.
    preserve_tool_ids: bool = False
    #: Split a leading inline ``<think>…</think>`` out of ``content`` into thinking (R-S12.4).
    think_tags: bool = False
    #: Tool-call emission (R-S10 live serialised, or R-S11 complete-then-emit).
    tool_streaming: Literal["live", "complete"] = "live"
    #: Argument fragments repeat everything sent so far (Q5).
    cumulative_args: bool = False
    #: Accept a stream that ends without a ``finish_reason`` as a normal end, but only when
    #: the final usage chunk arrived and no tool-call arguments are left open (issue 7.11).
    #: Off by default: such a stream is usually one the upstream cut short.
    finish_reason_optional: bool = False
    #: Largest streamed event accepted, in bytes; a bigger one ends the stream with an
    #: ``api_error`` (502 before the client stream is committed) instead of growing a buffer.
    max_event_size: int = 16 * 1024 * 1024


#: Tuned starting points, by name.
PRESETS: dict[str, OpenAIDialect] = {
    "generic": OpenAIDialect(),
    "openai": OpenAIDialect(
        max_tokens_field="max_completion_tokens",
        document_support="file",
        user_field="user",
    ),
    "deepseek": OpenAIDialect(
        reasoning_input="reasoning_content",
        reasoning_control="deepseek",
        requires_reasoning_content_on_tool_calls=True,
        supports_images=False,
        supports_response_format=False,
    ),
    "vllm": OpenAIDialect(
        reasoning_input="reasoning",
        supports_top_k=True,
    ),
    "llamacpp": OpenAIDialect(
        reasoning_input="reasoning_content",
        assistant_empty_content="empty_string",
        forced_tool_as_required=True,
        supports_top_k=True,
        think_tags=True,
    ),
    # llama-cpp-python's server (``python -m llama_cpp.server``), researched in its source:
    # assistant ``content`` is ``NotRequired[str]`` (null is a 422, "" is fine); "required" is
    # ignored by the chat formatters and an assertion error in chatml-function-calling, while
    # a named tool is grammar-constrained; response_format takes only text/json_object; no
    # usage in streams; parallel_tool_calls is not a field.
    "llama-cpp-python": OpenAIDialect(
        assistant_empty_content="empty_string",
        supports_tool_choice_required=False,
        explicit_tool_choice_auto=True,
        supports_parallel_tool_calls=False,
        supports_response_format=False,
        supports_top_k=True,
        include_usage=False,
        think_tags=True,
    ),
    "openrouter": OpenAIDialect(
        reasoning_input="reasoning_details",
        reasoning_control="openrouter",
        supports_top_k=True,
        document_support="file",
        user_field="user",
    ),
}
