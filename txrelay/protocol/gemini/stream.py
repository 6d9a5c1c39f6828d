"""
Gemini ``streamGenerateContent?alt=sse`` → Anthropic event stream (G→A, mapping.md §6, §7).

:class:`GeminiStreamTranslator` is a sans-IO state machine driven like h11 (see
:class:`~txrelay.protocol.translator.StreamTranslator`): feed it upstream body bytes as they
arrive, get Anthropic events back. Each SSE ``data`` is a whole ``GenerateContentResponse``
whose parts are *new* content (R-GS2): thought parts become thinking blocks, text parts text
blocks, and function calls, which Gemini sends whole, become ``tool_use`` blocks at once, each
preceded by a signature carrier when Gemini signed it (§10.2). ``usageMetadata`` is a running
total and is overwritten, never summed (R-U2). Gemini sends no ``[DONE]``: the stream ends when
the connection closes after the chunk with ``finishReason``; :attr:`finish_seen` tells the
transport it may stop waiting, and :meth:`finish` without a ``finishReason`` (or a blocked
prompt) ends with an ``error`` event (R-GS7).

Whatever the upstream sends, :meth:`feed` and :meth:`finish` return events and never raise: a
shape the translator cannot use ends the stream with one ``api_error`` event.

Feeding before :meth:`start` is allowed (R-X9 peeking): events are held until ``start``, and
``message_start`` then carries the real prompt size from the first chunk (R-GS1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.gemini import signatures as sigs
from txrelay.protocol.gemini.errors import gemini_stream_error
from txrelay.protocol.gemini.names import GeminiToolNames
from txrelay.protocol.ids import message_id as new_message_id
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps_str, loads
from txrelay.protocol.sse import SSEEvent, SSEParser
from txrelay.protocol.tokens import estimate_text_tokens

if TYPE_CHECKING:
    from txrelay.protocol.translator import StreamTranslator

log = logging.getLogger(__name__)

#: finishReason values that mean the model's output was withheld (§8.2 → ``refusal``).
REFUSAL_REASONS = frozenset({
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_OTHER", "IMAGE_RECITATION", "NO_IMAGE",
    "MODEL_ARMOR", "ESCALATION", "PUP_LIMITED_DISABLED", "JAILBREAK",
})
_MAX_TOKENS_REASONS = frozenset({"MAX_TOKENS", "CONTINUATION"})
_MALFORMED_REASONS = frozenset({
    "MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "MALFORMED_RESPONSE",
})
MALFORMED_TEXT = "[upstream returned a malformed tool call]"


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():  # proto-JSON int64 may be a string
        return int(value)
    return None


class GeminiStreamTranslator:
    """
    Translates one Gemini response (streamed, or whole via :meth:`process_response`).

    :param model: the model name the client asked for, echoed in ``message.model`` (R-X5).
    :param input_tokens: the prompt estimate for ``message_start`` when no chunk came first.
    :param tool_names: the request's name map, to restore client tool names.
    :param message_id: the ``msg_…`` id; minted when not given.
    :param upstream_name: prefixes error and refusal messages.
    :param upstream_model: the Gemini model id; the default signature scope.
    :param signature_scope: what signatures are bound to; the same value as the request's.
    :param signature_factory: signs thinking blocks whose thought came without a signature.
    """

    def __init__(
        self,
        *,
        model: str,
        input_tokens: int,
        tool_names: GeminiToolNames | None = None,
        message_id: str | None = None,
        upstream_name: str = "gemini",
        upstream_model: str = "",
        signature_scope: str | None = None,
        signature_factory: Callable[[], str] = sigs.unsigned_thought,
    ) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._names = tool_names or GeminiToolNames()
        self._message_id = message_id or new_message_id()
        self._upstream = upstream_name
        self._upstream_model = upstream_model
        self._scope = signature_scope if signature_scope is not None else upstream_model
        self._signature_factory = signature_factory

        self._parser = SSEParser()
        self._started = False
        self._held: list[Event] = []
        self._done = False
        self._error: RelayError | None = None
        self._received = False
        self._lenient_tail = False

        self._next_index = 0
        self._open_kind: str | None = None  # "text" | "thinking"
        self._open_index = -1
        self._thought_sig: str | None = None
        self._pending_ws = ""
        self._response_id: str | None = None
        self._calls = 0
        self._used_ids: set[str] = set()
        self._tool_emitted = False
        self._content = False

        self._finish: str | None = None
        self._finish_message: str | None = None
        self._blocked: str | None = None
        self._usage: dict[str, Any] | None = None
        self._out_chars = 0

    # --- public interface ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the stream has ended (``message_stop`` or ``error`` produced)."""
        return self._done

    @property
    def finish_seen(self) -> bool:
        """Whether Gemini sent a ``finishReason`` or blocked the prompt: the end is due."""
        return self._finish is not None or self._blocked is not None

    @property
    def malformed_call(self) -> bool:
        """
        Gemini ended with ``MALFORMED_FUNCTION_CALL`` (or a sibling) and produced nothing:
        §8.2 says retry the upstream call once if nothing was sent to the client yet (check
        before :meth:`start`); otherwise the stream ends with a short explanatory text.
        """
        return self._finish in _MALFORMED_REASONS and not self._content

    @property
    def error(self) -> RelayError | None:
        """The error that ended the stream, if it ended with one."""
        return self._error

    @property
    def received_event(self) -> bool:
        """Whether a JSON chunk has arrived from upstream (for R-X9 peeking)."""
        return self._received

    @property
    def message_id(self) -> str:
        """The ``msg_…`` id in ``message_start``."""
        return self._message_id

    def start(self, *, ping: bool = True) -> list[Event]:
        """``message_start`` (real prompt size once a chunk came, R-GS1), ``ping``, held events."""
        if self._started:
            return []
        self._started = True
        usage = ev.empty_usage(self._input_tokens)
        if self._usage is not None:
            known = self._prompt_usage()
            if known is not None:
                usage.update(known)
        out = [ev.message_start(self._message_id, self._model, usage)]
        if ping:
            out.append(ev.ping())
        out.extend(self._held)
        self._held = []
        return out

    def feed(self, data: bytes) -> list[Event]:
        """Translate a piece of the upstream body (arbitrary boundaries)."""
        out: list[Event] = []
        if self._done or not data:
            return out
        try:
            for sse in self._parser.feed(data):
                self._sse(sse, out)
                if self._done:
                    break
        except Exception:  # a shape nobody foresaw must still end cleanly
            self._unexpected(out)
        return self._emit(out)

    def finish(self) -> list[Event]:
        """End of the upstream body: a normal end after ``finishReason``, else an error."""
        out: list[Event] = []
        if self._done:
            return out
        # After finishReason a cut-off trailing event is harmless (the transport may end the
        # stream at the end of its grace period, like R-S16 for OpenAI).
        self._lenient_tail = self.finish_seen
        try:
            for sse in self._parser.finish():
                self._sse(sse, out)
                if self._done:
                    return self._emit(out)
            if self.finish_seen:
                self._finalize(out)
            else:
                what = "ended unexpectedly" if self._received else "returned an empty stream"
                self._fail(RelayError("api_error", f"{self._upstream}: upstream stream {what}"),
                           out)
        except Exception:
            self._unexpected(out)
        return self._emit(out)

    def process_response(self, body: Any) -> list[Event]:
        """Translate a whole non-streaming body (one response, or a JSON array of chunks)."""
        out: list[Event] = []
        if self._done:
            return out
        try:
            self._value(body, out)
        except Exception:
            self._unexpected(out)
        return self._emit(out)

    def finalize(self) -> list[Event]:
        """End normally (a whole response needs no ``finishReason`` to be complete)."""
        out: list[Event] = []
        if not self._done:
            try:
                self._finalize(out)
            except Exception:
                self._unexpected(out)
        return self._emit(out)

    # --- plumbing --------------------------------------------------------------------------

    def _emit(self, out: list[Event]) -> list[Event]:
        if self._started:
            return out
        self._held.extend(out)
        return []

    def _fail(self, error: RelayError, out: list[Event]) -> None:
        """R-E4: one ``error`` event, nothing after it; open blocks stay open."""
        out.append(error.event())
        self._error = error
        self._done = True

    def _unexpected(self, out: list[Event]) -> None:
        log.exception("could not translate a Gemini response")
        if not self._done:
            self._fail(RelayError(
                "api_error", f"{self._upstream}: upstream sent a response the relay could not "
                "translate"), out)

    def _sse(self, sse: SSEEvent, out: list[Event]) -> None:
        if sse.other:
            name, value = sse.other[0]
            line = f"{name}: {value}" if value else name
            self._fail(RelayError(
                "api_error", f"{self._upstream}: upstream sent a malformed stream line: "
                f"{line[:200]}"), out)
            return
        data = sse.data
        if not data or data.isspace():
            return
        try:
            value = loads(data)
        except JSONDecodeError:
            if self._lenient_tail:
                return
            self._fail(RelayError(
                "api_error", f"{self._upstream}: upstream sent invalid JSON in the stream: "
                f"{data[:200].decode('utf-8', 'replace')}"), out)
            return
        self._value(value, out)

    def _value(self, value: Any, out: list[Event]) -> None:
        if isinstance(value, list):  # the JSON-array form, or ``[{"error": …}]``
            for item in value:
                self._value(item, out)
                if self._done:
                    return
            return
        if not isinstance(value, dict):
            self._fail(RelayError(
                "api_error", f"{self._upstream}: upstream sent a chunk that is not an object"),
                out)
            return
        self._chunk(value, out)

    def _chunk(self, chunk: dict[str, Any], out: list[Event]) -> None:
        self._received = True
        if "error" in chunk:
            self._fail(gemini_stream_error(chunk, upstream_name=self._upstream,
                                           upstream_model=self._upstream_model), out)
            return
        rid = chunk.get("responseId")
        if self._response_id is None and isinstance(rid, str) and rid:
            self._response_id = rid
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage  # a running total: overwrite, never add (§9.2)
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict):
            reason = feedback.get("blockReason")
            if isinstance(reason, str) and reason:
                self._blocked = reason
        candidates = chunk.get("candidates")
        if not isinstance(candidates, list):
            return
        candidate = next(
            (c for c in candidates if isinstance(c, dict) and c.get("index", 0) in (0, None)),
            None,
        )
        if candidate is None:
            return
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict):
                self._part(part, out)
                if self._done:
                    return
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason:
            self._finish = reason
            message = candidate.get("finishMessage")
            if isinstance(message, str) and message:
                self._finish_message = message

    # --- parts -----------------------------------------------------------------------------

    def _part(self, part: dict[str, Any], out: list[Event]) -> None:
        sig = part.get("thoughtSignature")
        sig = sig if isinstance(sig, str) and sig else None
        call = part.get("functionCall")
        if isinstance(call, dict):
            self._call(call, sig, out)
            return
        text = part.get("text")
        text = text if isinstance(text, str) else ""
        if part.get("thought") is True:
            if text and self._open_kind == "thinking" and self._thought_sig is not None:
                self._close_block(out)  # never merge a signed part with the next (gemini §6)
            if text:
                self._thinking(text, out)
            if sig is not None:
                if self._open_kind != "thinking":
                    self._open_block("thinking", out)
                self._thought_sig = sig
            return
        if text:
            self._text(text, out)
        if sig is not None:
            # Signatures of text parts are not validated by Gemini (§6); not carried.
            log.debug("dropping the thought signature of a text part")
        code = part.get("executableCode")
        if isinstance(code, dict) and isinstance(code.get("code"), str):
            language = code.get("language")
            lang = language.lower() if isinstance(language, str) else ""
            lang = "" if lang == "language_unspecified" else lang
            self._text(f"\n```{lang}\n{code['code']}\n```\n", out)
        result = part.get("codeExecutionResult")
        if isinstance(result, dict) and isinstance(result.get("output"), str):
            self._text(f"\n```\n{result['output']}\n```\n", out)

    def _open_block(self, kind: str, out: list[Event]) -> None:
        if self._open_kind is not None:
            self._close_block(out)
        index = self._next_index
        self._next_index = index + 1
        self._open_kind = kind
        self._open_index = index
        self._content = True
        if kind == "text":
            out.append(ev.text_block_start(index))
        else:
            self._thought_sig = None
            out.append(ev.thinking_block_start(index))

    def _close_block(self, out: list[Event]) -> None:
        """Close the open block (thinking: its signature first, R-S5)."""
        index = self._open_index
        if self._open_kind == "thinking":
            sig = self._thought_sig
            signature = (
                sigs.encode_thought(sig, self._scope) if sig is not None
                else self._signature_factory()
            )
            out.append(ev.signature_delta(index, signature))
            self._thought_sig = None
        out.append(ev.block_stop(index))
        self._open_kind = None

    def _text(self, text: str, out: list[Event]) -> None:
        if self._open_kind == "text":
            out.append(ev.text_delta(self._open_index, text))
            self._out_chars += len(text)
            return
        if text.isspace():  # R-S6: never open a whitespace-only block
            self._pending_ws += text
            return
        self._open_block("text", out)
        text = self._pending_ws + text
        self._pending_ws = ""
        out.append(ev.text_delta(self._open_index, text))
        self._out_chars += len(text)

    def _thinking(self, text: str, out: list[Event]) -> None:
        if self._open_kind != "thinking":
            self._open_block("thinking", out)
        out.append(ev.thinking_delta(self._open_index, text))
        self._out_chars += len(text)

    def _call(self, call: dict[str, Any], sig: str | None, out: list[Event]) -> None:
        name = call.get("name")
        if not isinstance(name, str) or not name:
            log.info("ignoring a Gemini function call without a name")
            return
        args = call.get("args")
        if isinstance(args, str):
            try:
                args = loads(args)
            except JSONDecodeError:
                args = {"_invalid_arguments": args}
        if not isinstance(args, dict):
            args = {}
        if self._open_kind is not None:
            self._close_block(out)
        self._pending_ws = ""
        seed = f"{self._response_id or self._message_id}|{self._calls}|{name}"
        self._calls += 1
        tool_id = sigs.tool_use_id_for(call.get("id"), seed)
        if tool_id in self._used_ids:  # Gemini repeated an id: mint a stable fresh one
            tool_id = sigs.tool_use_id_for(None, seed)
        self._used_ids.add(tool_id)
        if sig is not None:  # the carrier block (§10.2) right before its tool_use
            index = self._next_index
            self._next_index = index + 1
            out.append(ev.thinking_block_start(index))
            out.append(ev.signature_delta(index, sigs.encode_call(tool_id, sig, self._scope)))
            out.append(ev.block_stop(index))
        index = self._next_index
        self._next_index = index + 1
        out.append(ev.tool_use_block_start(index, tool_id, self._names.client(name)))
        text = dumps_str(args)
        out.append(ev.input_json_delta(index, text))
        out.append(ev.block_stop(index))
        self._out_chars += len(text)
        self._tool_emitted = True
        self._content = True

    # --- end -------------------------------------------------------------------------------

    def _finalize(self, out: list[Event]) -> None:
        """§8.2 stop reason, §9.2 usage, ``message_delta`` + ``message_stop``."""
        reason = self._finish
        if reason == "MISSING_THOUGHT_SIGNATURE":
            self._fail(RelayError(
                "invalid_request_error",
                f"{self._upstream}: the request lacked a thought signature Gemini requires "
                "(MISSING_THOUGHT_SIGNATURE)"), out)
            return
        note: str | None = None
        if self._blocked is not None and reason is None:
            stop = "refusal"
            note = f"[{self._upstream} blocked the prompt: {self._blocked}]"
        elif reason in _MAX_TOKENS_REASONS:
            stop = "max_tokens"
        elif self._tool_emitted:
            stop = "tool_use"
        elif reason in REFUSAL_REASONS:
            stop = "refusal"
            detail = f": {self._finish_message}" if self._finish_message else ""
            note = f"[{self._upstream} stopped the response: {reason}{detail}]"
        else:
            stop = "end_turn"
            if reason in _MALFORMED_REASONS and not self._content:
                note = MALFORMED_TEXT
            elif reason not in (None, "STOP", "TOO_MANY_TOOL_CALLS", "OTHER",
                                "FINISH_REASON_UNSPECIFIED", *_MALFORMED_REASONS):
                log.info("unknown Gemini finishReason %r mapped to end_turn", reason)
        if note is not None:
            if self._open_kind == "text":
                self._text("\n\n" + note, out)
            else:
                self._pending_ws = ""
                self._text(note, out)
        if self._open_kind is not None:
            self._close_block(out)
        out.append(ev.message_delta(stop, None, self._final_usage()))
        out.append(ev.message_stop())
        self._done = True

    def _prompt_usage(self) -> dict[str, int] | None:
        usage = self._usage or {}
        prompt = _int(usage.get("promptTokenCount"))
        if prompt is None:
            return None
        cached = min(_int(usage.get("cachedContentTokenCount")) or 0, prompt)
        tool_prompt = _int(usage.get("toolUsePromptTokenCount")) or 0
        return {
            "input_tokens": prompt - cached + tool_prompt,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
        }

    def _final_usage(self) -> dict[str, Any]:
        """R-U2 from the last ``usageMetadata``; estimates where Gemini gave nothing."""
        out: dict[str, Any] = {
            "input_tokens": self._input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        prompt = self._prompt_usage()
        if prompt is not None:
            out.update(prompt)
        usage = self._usage or {}
        candidates = _int(usage.get("candidatesTokenCount"))
        thoughts = _int(usage.get("thoughtsTokenCount")) or 0
        if candidates is None:
            candidates = estimate_text_tokens(self._out_chars) if not thoughts else 0
        out["output_tokens"] = candidates + thoughts
        if thoughts:
            out["output_tokens_details"] = {"thinking_tokens": thoughts}
        return out


if TYPE_CHECKING:

    def _satisfies_protocol(t: GeminiStreamTranslator) -> StreamTranslator:
        return t
