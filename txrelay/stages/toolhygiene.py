# -*- test-case-name: tests.stages.test_toolhygiene -*-
"""
The ``tool-hygiene`` stage: makes a weak backend's tool use look like Anthropic's.

Before the call it repairs the request's tool-use history (illegal or repeated ids, calls
without results, results without calls: :mod:`txrelay.protocol.toolcalls.history`); on the
reply it puts a filter that turns tool calls the model wrote as text into ``tool_use``
blocks and makes the response's tool-use ids legal and unique
(:mod:`txrelay.protocol.toolcalls.filter`). Streaming and non-streaming clients get the same,
since both are served from the reply's event stream; the filter adds no buffering beyond the
text that could still start a call, so backpressure and pings are untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.toolcalls.arguments import ToolSet
from txrelay.protocol.toolcalls.filter import ToolCallFilter
from txrelay.protocol.toolcalls.history import INTERRUPTED, repair_history
from txrelay.streams import StreamEnd

if TYPE_CHECKING:
    from txrelay.interfaces import StageServices

log = RelayLogger()

Format = Literal["hermes", "mistral", "llama", "bare-json"]
ALL_FORMATS: tuple[Format, ...] = ("hermes", "mistral", "llama", "bare-json")


@attrs.frozen
class ToolHygieneOptions:
    """Options of the ``tool-hygiene`` stage (the README lists them)."""

    #: The text notations of tool calls to convert.
    formats: tuple[Format, ...] = ALL_FORMATS
    #: A call whose arguments stay invalid for the tool's input_schema after repair:
    #: ``"text"`` leaves it as text, ``"pass"`` converts it anyway.
    invalid_arguments: Literal["text", "pass"] = "text"
    #: A tool_result whose tool_use is missing: ``"text"`` (a text block saying so) or
    #: ``"drop"``.
    orphan_results: Literal["text", "drop"] = "text"
    #: Replace illegal and duplicated tool-use ids (history and response).
    fix_ids: bool = True
    #: Repair the history (ids, orphans) before the upstream sees it.
    repair_history: bool = True
    #: The content of the synthetic error result given to a call that got none.
    interrupted_message: str = INTERRUPTED


@attrs.frozen
class ToolHygieneStage:
    """See the module docstring."""

    options: ToolHygieneOptions = ToolHygieneOptions()

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation not in ("messages", "count_tokens"):
            return await proceed(exchange)
        opts = self.options
        req = exchange.require_request()
        if opts.repair_history:
            repaired = repair_history(req.messages, fix_ids=opts.fix_ids,
                                      orphan_results=opts.orphan_results,
                                      interrupted=opts.interrupted_message)
            history_ids = repaired.tool_ids
            if repaired.changed:
                log.info("tool-hygiene repaired the history: {notes}",
                         notes="; ".join(repaired.notes), request_id=exchange.request_id)
                exchange.request = attrs.evolve(req, messages=repaired.messages)
        else:
            history_ids = frozenset(
                b["id"] for m in req.messages if m.role == "assistant"
                for b in m.blocks() if b.get("type") == "tool_use" and isinstance(b.get("id"), str))
        reply = await proceed(exchange)
        if exchange.operation != "messages":
            return reply
        choice = (req.tool_choice or {}).get("type")
        tools = ToolSet.from_tools(req.tools if choice != "none" else None,
                                   accept_invalid=opts.invalid_arguments == "pass")
        if not tools and not opts.fix_ids:
            return reply
        stream_filter = ToolCallFilter(tools, frozenset(opts.formats), len(req.messages),
                                       history_ids, opts.fix_ids)
        request_id = exchange.request_id

        def report(_: StreamEnd) -> None:
            if stream_filter.converted or stream_filter.rejections:
                log.info("tool-hygiene made {converted} tool call(s) out of text; left as "
                         "text: {rejected}", converted=stream_filter.converted,
                         rejected="; ".join(stream_filter.rejections) or "nothing",
                         request_id=request_id)

        return reply.with_filter(stream_filter).on_end(report)


def build_tool_hygiene(options: ToolHygieneOptions, services: StageServices) -> ToolHygieneStage:
    """The ``tool-hygiene`` stage; ``ValueError`` when every repair is switched off."""
    if not options.formats and not options.fix_ids and not options.repair_history:
        raise ValueError("formats, fix_ids and repair_history: nothing left to do")
    return ToolHygieneStage(options)
