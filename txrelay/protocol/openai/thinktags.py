"""
Split a leading inline ``<think>…</think>`` out of streamed ``content`` (R-S12.4).

Some servers (llama.cpp without a reasoning parser, Qwen and DeepSeek-R1 distills) put the
model's reasoning at the start of ``content`` between think tags. :class:`ThinkTagSplitter`
sees the content deltas in order and says which pieces are thinking and which are text; tags
split across deltas are held until they can be told apart. Only a tag at the very start (after
whitespace) counts: a ``<think>`` later in the answer is literal text.
"""

from __future__ import annotations

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"

#: A piece of content: (is thinking, text).
Piece = tuple[bool, str]

_DECIDING, _INSIDE, _PLAIN, _AFTER = 0, 1, 2, 3


class ThinkTagSplitter:
    """Feed content deltas; get back ``(thinking, text)`` pieces in order."""

    __slots__ = ("_buf", "_state")

    def __init__(self) -> None:
        self._state = _DECIDING
        self._buf = ""

    def feed(self, text: str) -> list[Piece]:
        """The pieces ``text`` completes (thinking pieces may be empty)."""
        out: list[Piece] = []
        while text:
            text = self._step(text, out)
        return out

    def _step(self, text: str, out: list[Piece]) -> str:
        """Handle ``text``; return what is left to handle after a ``</think>``."""
        state = self._state
        if state == _PLAIN:
            out.append((False, text))
            return ""
        if state == _AFTER:  # right after </think>: skip the separating whitespace
            text = text.lstrip()
            if text:
                self._state = _PLAIN
                out.append((False, text))
            return ""
        buf = self._buf + text
        if state == _DECIDING:
            stripped = buf.lstrip()
            if not stripped or (
                len(stripped) < len(_THINK_OPEN) and _THINK_OPEN.startswith(stripped)
            ):
                self._buf = buf
                return ""
            if not stripped.startswith(_THINK_OPEN):
                self._state = _PLAIN
                self._buf = ""
                out.append((False, buf))
                return ""
            self._state = _INSIDE
            buf = stripped[len(_THINK_OPEN) :]
        end = buf.find(_THINK_CLOSE)
        if end >= 0:
            self._buf = ""
            self._state = _AFTER
            out.append((True, buf[:end]))
            return buf[end + len(_THINK_CLOSE) :]
        keep = 0
        for k in range(min(len(_THINK_CLOSE) - 1, len(buf)), 0, -1):
            if buf.endswith(_THINK_CLOSE[:k]):
                keep = k
                break
        self._buf = buf[len(buf) - keep :] if keep else ""
        out.append((True, buf[: len(buf) - keep]))
        return ""

    def flush(self) -> Piece | None:
        """End of content: what is still held back (an unclosed think is thinking)."""
        buf = self._buf
        if not buf:
            return None
        self._buf = ""
        return (self._state == _INSIDE, buf)
