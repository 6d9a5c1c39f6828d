"""
A conversation's tool-use history repaired before the upstream sees it.

Anthropic's rules (which most OpenAI-compatible servers enforce too): tool-use ids are legal
(``^[a-zA-Z0-9_-]+$``) and unique, and every ``tool_use`` of an assistant message is answered
by a ``tool_result`` in the very next user message. Clients break them when a call was
interrupted (Ctrl-C in Claude Code), when a history was trimmed, or when an earlier backend
produced odd ids. :func:`repair_history` mends, on the Anthropic side and so for every
backend (the openai-chat translator's R-O12/R-O13 then find nothing left to pair):

- an illegal or repeated ``tool_use`` id: replaced by :func:`~.ids.derived_id` of its message
  index, block index and old id, and the ``tool_result`` answering it follows;
- a ``tool_use`` with no ``tool_result`` in the next user message: a synthetic error result
  ("the tool call was interrupted") is put first in that message (or in a user message
  inserted before the next assistant message). A final assistant message (a prefill) is
  left alone: it is the model's turn to continue it;
- a ``tool_result`` that answers no ``tool_use`` of the message before it: turned into a text
  block that says so and carries its text (``orphan_results="text"``), or dropped
  (``"drop"``; a message left empty keeps the text form). A repaired user message has its
  ``tool_result`` blocks first, as Anthropic requires, then its other blocks in order.

Nothing changes, and the request body stays byte-identical, when the history is sound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs

from txrelay.protocol.anthropic import InputMessage
from txrelay.protocol.toolcalls.ids import derived_id, is_legal_id

OrphanResults = Literal["text", "drop"]
INTERRUPTED = "the tool call was interrupted"


@attrs.frozen
class Repaired:
    """
    The outcome of :func:`repair_history`.

    :ivar messages: the repaired messages (the input list itself when nothing changed).
    :ivar changed: whether anything was repaired.
    :ivar tool_ids: every ``tool_use`` id in the repaired history.
    :ivar notes: what was repaired, in plain words (for the log).
    """

    messages: list[InputMessage]
    changed: bool
    tool_ids: frozenset[str]
    notes: tuple[str, ...] = ()


def interrupted_result(tool_id: str, message: str = INTERRUPTED) -> dict[str, Any]:
    """The synthetic error ``tool_result`` for a call that got no result."""
    return {"type": "tool_result", "tool_use_id": tool_id, "is_error": True,
            "content": message}


def _result_text(block: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    content = block.get("content")
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    others: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif isinstance(part, dict):
            others.append(part)
    return "\n".join(texts), others


def orphan_as_text(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``tool_result`` without its ``tool_use``, as a text block (and its images)."""
    text, others = _result_text(block)
    what = "error" if block.get("is_error") else "result"
    ref = block.get("tool_use_id")
    head = f"[tool {what} for call {ref!s}, whose tool_use is not in the conversation]"
    return [{"type": "text", "text": f"{head}\n{text}" if text else head}, *others]


@attrs.define
class _Repairer:
    fix_ids: bool
    orphan_results: OrphanResults
    interrupted: str
    out: list[InputMessage] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    seen: set[str] = attrs.Factory(set)
    #: The previous assistant message's calls: id the client knows → ids sent upstream.
    pending: dict[object, list[str]] = attrs.Factory(dict)
    pending_ids: list[str] = attrs.Factory(list)
    changed: bool = False

    def assistant(self, i: int, msg: InputMessage) -> None:
        if self.pending_ids:
            self.notes.append(f"messages.{i}: tool calls before it had no results")
            self.out.append(InputMessage(
                "user", [interrupted_result(t, self.interrupted) for t in self.pending_ids]))
            self.changed = True
        self.pending, self.pending_ids = {}, []
        if isinstance(msg.content, str):
            self.out.append(msg)
            return
        blocks: list[dict[str, Any]] = []
        for j, given in enumerate(msg.content):
            block = given
            if block.get("type") == "tool_use":
                original = block.get("id")
                new = original if isinstance(original, str) else ""
                if self.fix_ids and (not is_legal_id(original) or original in self.seen):
                    new = derived_id(i, j, original if isinstance(original, str) else "")
                    self.notes.append(f"messages.{i}.content.{j}: tool_use id replaced")
                if new != original:
                    block = dict(block, id=new)
                    self.changed = True
                self.seen.add(new)
                self.pending.setdefault(original, []).append(new)
                self.pending_ids.append(new)
            blocks.append(block)
        self.out.append(InputMessage(msg.role, blocks) if blocks != msg.content else msg)

    def user(self, i: int, msg: InputMessage) -> None:
        answered: set[str] = set()
        results: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        touched = False
        for j, given in enumerate(msg.blocks()):
            if given.get("type") != "tool_result":
                rest.append(given)
                continue
            ref = given.get("tool_use_id")
            queue = self.pending.get(ref) if isinstance(ref, str) else None
            if queue:
                new = queue.pop(0)
                answered.add(new)
                results.append(given if new == ref else dict(given, tool_use_id=new))
                touched = touched or new != ref
                continue
            touched = True
            self.notes.append(f"messages.{i}.content.{j}: tool_result without its tool_use")
            if self.orphan_results == "text":
                rest += orphan_as_text(given)
        missing = [t for t in self.pending_ids if t not in answered]
        if missing:
            self.notes.append(f"messages.{i}: {len(missing)} tool call(s) had no result")
            results = [interrupted_result(t, self.interrupted) for t in missing] + results
            touched = True
        self.pending, self.pending_ids = {}, []
        if not touched:
            self.out.append(msg)
            return
        # Results first, as Anthropic requires; then the message's other blocks in order.
        blocks = results + rest
        if not blocks:  # everything was a dropped orphan: keep the message, as text
            blocks = [b for block in msg.blocks() for b in orphan_as_text(block)]
        self.changed = True
        self.out.append(InputMessage(msg.role, blocks))


def repair_history(messages: Sequence[InputMessage], *, fix_ids: bool = True,
                   orphan_results: OrphanResults = "text",
                   interrupted: str = INTERRUPTED) -> Repaired:
    """Repair ``messages`` as the module docstring says."""
    r = _Repairer(fix_ids, orphan_results, interrupted)
    for i, msg in enumerate(messages):
        if msg.role == "assistant":
            r.assistant(i, msg)
        elif msg.role == "user":
            r.user(i, msg)
        else:
            r.out.append(msg)
    seen = frozenset(r.seen)
    if not r.changed:
        return Repaired(list(messages), False, seen)
    return Repaired(r.out, True, seen, tuple(r.notes))
