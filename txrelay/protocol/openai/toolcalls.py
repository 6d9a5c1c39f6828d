"""
Assembly of streamed tool calls (mapping.md §4.5, R-S9, R-S10, R-X11).

Upstreams stream a tool call as fragments: a name, an id, argument text in pieces. Which call a
fragment belongs to is not always clear (missing or reused ``index``, ids invented per
fragment, whole calls in one fragment); :class:`ToolCallTable` decides (R-S9) and keeps the
calls in first-seen order. Each :class:`ToolCall` runs its argument text through an
incremental JSON-prefix checker, so the translator can forward valid prefixes live and knows
how to complete them at the end (:func:`arguments_remainder`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txrelay.protocol.ids import TOOL_ID_PATTERN
from txrelay.protocol.jsoncodec import loads
from txrelay.protocol.jsonprefix import JSONPrefixChecker, json_completion, repair_json_object

PENDING, OPEN, CLOSED = 0, 1, 2


class ToolCall:
    """One upstream tool call being assembled (§4.5)."""

    __slots__ = (
        "block_index",
        "broken",
        "checker",
        "chunk_seq",
        "fwd",
        "name",
        "parts",
        "position",
        "sent",
        "state",
        "upstream_id",
    )

    def __init__(self, chunk_seq: int, position: int) -> None:
        self.upstream_id: str | None = None
        self.name: str | None = None
        self.parts: list[str] = []  # raw argument text as received
        self.checker = JSONPrefixChecker()
        self.broken = False  # the raw text stopped being a valid JSON prefix
        self.fwd: list[str] = []  # checker output: what may be / was forwarded
        self.sent = 0  # how many entries of fwd were emitted
        self.state = PENDING
        self.block_index = -1
        self.chunk_seq = chunk_seq
        self.position = position


class ToolCallTable:
    """Every tool call of one stream, found by index, id or position (R-S9)."""

    __slots__ = ("by_id", "by_index", "calls", "chunk_seq", "queue")

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.queue: list[ToolCall] = []  # calls not opened yet, in first-seen order
        self.by_index: dict[int, ToolCall] = {}
        self.by_id: dict[str, ToolCall] = {}
        self.chunk_seq = 0

    def call_for(self, frag: dict[str, Any], position: int, name: Any) -> ToolCall:
        """R-S9: which call a fragment belongs to."""
        index = frag.get("index")
        fid = frag.get("id")
        fid = fid if isinstance(fid, str) and fid else None
        if isinstance(index, int) and not isinstance(index, bool):
            call = self.by_index.get(index)
            if call is None or (
                # Q7: a different id on an index whose call is named → a new call. Also
                # require a name or a finished call, so a server that invents an id per
                # fragment does not split one call into many.
                fid is not None
                and call.name is not None
                and call.upstream_id is not None
                and fid != call.upstream_id
                and (bool(name) or call.checker.complete)
            ):
                call = self.new_call(position)
                self.by_index[index] = call
            return call
        if fid is not None:
            call = self.by_id.get(fid)
            if call is None:
                call = self.new_call(position)
                self.by_id[fid] = call
            return call
        last = self.calls[-1] if self.calls else None
        if (
            last is None
            or (last.chunk_seq == self.chunk_seq and last.position != position)
            or (
                isinstance(name, str)
                and name
                and last.name is not None
                and (name != last.name or last.checker.complete)
            )
        ):
            return self.new_call(position)
        return last

    def new_call(self, position: int) -> ToolCall:
        """A new call, queued to be opened."""
        call = ToolCall(self.chunk_seq, position)
        self.calls.append(call)
        self.queue.append(call)
        return call


class ToolIds:
    """R-X11: a fresh ``toolu_`` id per call, or the upstream's when allowed and safe."""

    __slots__ = ("_factory", "_preserve", "_used")

    def __init__(self, factory: Callable[[], str], *, preserve: bool) -> None:
        self._factory = factory
        self._preserve = preserve
        self._used: set[str] = set()

    def mint(self, upstream_id: str | None) -> str:
        """The client-side id for a call whose upstream id is ``upstream_id``."""
        if (
            self._preserve
            and upstream_id is not None
            and upstream_id not in self._used
            and TOOL_ID_PATTERN.match(upstream_id)
        ):
            tool_id = upstream_id
        else:
            tool_id = self._factory()
            while tool_id in self._used:
                tool_id = self._factory()
        self._used.add(tool_id)
        return tool_id


def arguments_remainder(call: ToolCall) -> str | None:
    """What completes the forwarded text into the repaired input (R-S10, R-O28)."""
    checker = call.checker
    if not call.broken:
        if checker.complete:
            return ""
        if not checker.started:
            return "{}"  # an empty argument string ends as {}
        suffix = checker.closing_suffix()
        try:
            if isinstance(loads("".join(call.fwd) + suffix), dict):
                return suffix
        except (ValueError, RecursionError):  # JSONDecodeError, huge integers, deep nesting
            pass
    value = repair_json_object("".join(call.parts))
    return json_completion("".join(call.fwd), value)
