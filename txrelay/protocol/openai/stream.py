"""
OpenAI Chat Completions stream → Anthropic event stream (O→A, mapping.md §4).

:class:`ChatStreamTranslator` is a sans-IO state machine: feed it upstream body bytes as they
arrive, get Anthropic events back. It keeps at most one block open (R-S3), numbers blocks
without gaps (R-S4), holds leading whitespace (R-S6), signs thinking blocks (R-S5), streams
tool calls live and serialised (R-S10) through an incremental JSON-prefix checker, and ends
with exactly one ``message_delta`` + ``message_stop`` (R-S14/R-S15), or with one ``error``
event and nothing after it (R-E4).

Pings other than the one right after ``message_start`` (R-S2) are the I/O layer's job, as is
the grace period after ``finish_reason`` (R-S16): when :attr:`ChatStreamTranslator.finish_seen`
is true and the upstream stays silent, call :meth:`~ChatStreamTranslator.finish`.

Feeding before :meth:`~ChatStreamTranslator.start` is allowed (R-X9 peeking): events are held
until ``start``; if the upstream reported an error first, :attr:`ChatStreamTranslator.error` is
set and the I/O layer can answer with an HTTP error instead of committing the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.ids import message_id, tool_use_id
from txrelay.protocol.jsoncodec import JSONNestingError, dumps_str, fast_loads, loads
from txrelay.protocol.jsonprefix import repair_json_object
from txrelay.protocol.openai.dialect import OpenAIDialect
from txrelay.protocol.openai.errors import stream_error
from txrelay.protocol.openai.signature import encode_orx, oai_signature
from txrelay.protocol.openai.thinktags import ThinkTagSplitter
from txrelay.protocol.openai.toolcalls import (
    CLOSED,
    OPEN,
    ToolCall,
    ToolCallTable,
    ToolIds,
    arguments_remainder,
)
from txrelay.protocol.openai.toolnames import ToolNameMap
from txrelay.protocol.openai.usage import anthropic_usage
from txrelay.protocol.sse import SSEEvent, SSEEventTooLarge, SSEParser

if TYPE_CHECKING:
    from txrelay.protocol.translator import StreamTranslator

log = logging.getLogger(__name__)

_ORX_KEYS = ("signature", "format", "id")
#: The keys of a delta the text fast path takes (:meth:`ChatStreamTranslator._plain_text`).
_PLAIN_DELTA = frozenset({"content", "role"})
_NOT_PARSED = object()
#: Tool-call arguments nested deeper than this end the stream (hostile or broken upstream).
MAX_ARGUMENT_DEPTH = 256

__all__ = ["ChatStreamTranslator", "oai_signature"]


class ChatStreamTranslator:
    """
    Translates one streamed Chat Completions response into Anthropic events.

    :param model: the model name the client asked for, echoed in ``message.model`` (R-X5).
    :param input_tokens: the local prompt estimate for ``message_start`` (R-S1).
    :param dialect: the upstream's switches.
    :param stop_sequences: the client's ``stop_sequences`` (vLLM reports the matched one).
    :param tool_names: the request's tool name map, to reverse shortened names (R-O18).
    :param message_id: the ``msg_…`` id; minted when not given.
    :param id_factory: mints tool-use ids (R-X11); injectable for deterministic tests.
    :param signature_factory: mints thinking signatures (R-S5); injectable likewise.
    :param upstream_name: prefixes error messages.

    :ivar done: whether the stream has ended (``message_stop`` or ``error`` produced).
    :ivar finish_seen: whether the upstream sent a ``finish_reason`` (start of the R-S16
        grace period).

    ``done`` and ``finish_seen`` are read once per upstream read: plain attributes (read-only
    for everyone else), not properties, which cost a Python call each.
    """

    # One per held-open stream: no instance dict (issue 13).
    __slots__ = (
        "_complete_mode",
        "_cumulative",
        "_dialect",
        "_error",
        "_finish",
        "_held",
        "_input_tokens",
        "_learning",
        "_lenient_tail",
        "_live",
        "_message_id",
        "_model",
        "_names",
        "_next_index",
        "_open_index",
        "_open_kind",
        "_orx_meta",
        "_out_chars",
        "_parser",
        "_pending_ws",
        "_reasoning_source",
        "_received",
        "_refusal",
        "_saw_done_marker",
        "_signature_factory",
        "_started",
        "_stop_sequences",
        "_template",
        "_think",
        "_tool_emitted",
        "_tool_ids",
        "_tools",
        "_upstream",
        "_usage",
        "_vendor_stop",
        "done",
        "finish_seen",
    )

    done: bool
    finish_seen: bool
    #: Whether chunks may skip the full JSON parse when they differ from the last plain
    #: text chunk only in their content (off: every chunk is parsed; for tests).
    _TEMPLATES = True

    def __init__(
        self,
        *,
        model: str,
        input_tokens: int,
        dialect: OpenAIDialect,
        stop_sequences: Iterable[str] | None = None,
        tool_names: ToolNameMap | None = None,
        message_id: str | None = None,
        id_factory: Callable[[], str] = tool_use_id,
        signature_factory: Callable[[], str] = oai_signature,
        upstream_name: str = "upstream",
    ) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._dialect = dialect
        self._stop_sequences = frozenset(stop_sequences or ())
        self._names = tool_names
        self._message_id = message_id or _new_message_id()
        self._signature_factory = signature_factory
        self._upstream = upstream_name
        self._complete_mode = dialect.tool_streaming == "complete"
        self._cumulative = dialect.cumulative_args

        self._parser = SSEParser(max_event_size=dialect.max_event_size)
        self._started = False
        self._held: list[Event] = []
        self.done = False
        self._error: RelayError | None = None
        self._received = False
        self._saw_done_marker = False
        self._lenient_tail = False

        self._next_index = 0
        self._open_kind: str | None = None  # "text" | "thinking" | "tool_use"
        self._open_index = -1
        self._pending_ws = ""
        self._reasoning_source: str | None = None
        self._orx_meta: dict[str, Any] | None = None
        self._think = ThinkTagSplitter() if dialect.think_tags else None

        self._tools = ToolCallTable()
        self._tool_ids = ToolIds(id_factory, preserve=dialect.preserve_tool_ids)
        self._live: ToolCall | None = None
        self._tool_emitted = False

        self._finish: str | None = None
        #: The bytes before and after the content string of a plain text chunk, and their
        #: combined length (:meth:`_learn`); attempts left at learning them.
        self._template: tuple[bytes, bytes, int] | None = None
        self._learning = 3 if self._TEMPLATES else 0
        self.finish_seen = False
        self._vendor_stop: str | None = None
        self._usage: dict[str, Any] | None = None
        self._refusal = False
        self._out_chars = 0

    # --- public interface ------------------------------------------------------------------

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
        """``message_start`` and one ``ping`` (R-S1, R-S2), plus anything fed before."""
        if self._started:
            return []
        self._started = True
        out = [ev.message_start(self._message_id, self._model, ev.empty_usage(self._input_tokens))]
        if ping:
            out.append(ev.ping())
        out.extend(self._held)
        self._held = []
        return out

    def feed(self, data: bytes) -> list[Event]:
        """Translate a piece of the upstream body (arbitrary boundaries)."""
        if self.done:
            return []
        out: list[Event] = []
        too_large: SSEEventTooLarge | None = None
        try:
            events = self._parser.feed(data)
        except SSEEventTooLarge as e:
            events, too_large = e.events, e
        try:
            for sse in events:
                self._sse(sse, out)
                if self.done:
                    break
        except Exception as e:  # a shape nobody foresaw must not escape into the I/O layer
            self._untranslatable(e, out)
        if too_large is not None and not self.done:
            self._fail(self._too_large(too_large.limit), out)
        return out if self._started else self._emit(out)

    def finish(self) -> list[Event]:
        """
        End of the upstream body (or the end of the R-S16 grace period).

        A ``finish_reason`` seen → a normal end. Otherwise the stream was cut and an ``error``
        event reports it: EOF without ``[DONE]`` (R-S13), and also ``[DONE]`` without a
        ``finish_reason`` (a deliberate deviation from Q9, issue 7.11), unless the dialect's
        ``finish_reason_optional`` is set and the final usage chunk arrived — and never when
        tool-call arguments are still open.
        """
        if self.done:
            return []
        out: list[Event] = []
        try:
            self._finish_stream(out)
        except Exception as e:
            self._untranslatable(e, out)
        return self._emit(out)

    def _finish_stream(self, out: list[Event]) -> None:
        # After finish_reason a cut-off trailing line is harmless (R-S16 grace period).
        self._lenient_tail = self._finish is not None
        for sse in self._parser.finish():
            self._sse(sse, out)
            if self.done:
                return
        if self._finish is not None:
            self._finalize(out)
        elif self._saw_done_marker or (
            self._dialect.finish_reason_optional and self._usage is not None
        ):
            self._end_without_finish(out)
        else:
            what = "ended unexpectedly" if self._received else "returned an empty stream"
            self._fail(RelayError("api_error", f"{self._upstream}: upstream stream {what}"), out)

    def process_chunk(self, chunk: dict[str, Any]) -> list[Event]:
        """Translate one decoded chunk (used for non-streaming responses)."""
        out: list[Event] = []
        if not self.done:
            try:
                self._chunk(chunk, out)
            except Exception as e:
                self._untranslatable(e, out)
        return self._emit(out)

    def finalize(self) -> list[Event]:
        """End normally, as on ``[DONE]``."""
        out: list[Event] = []
        if not self.done:
            try:
                self._finalize(out)
            except Exception as e:
                self._untranslatable(e, out)
        return self._emit(out)

    # --- plumbing --------------------------------------------------------------------------

    def _emit(self, out: list[Event]) -> list[Event]:
        if self._started:
            return out
        self._held.extend(out)
        return []

    def _too_large(self, limit: int) -> RelayError:
        return RelayError(
            "api_error",
            f"{self._upstream}: upstream sent a stream event larger than the relay's limit of "
            f"{limit} bytes (dialect setting max_event_size)",
            status=502,
        )

    def _malformed(self, what: str, out: list[Event]) -> None:
        """End with a 502 naming what was wrong with the upstream's chunk."""
        self._fail(
            RelayError(
                "api_error",
                f"{self._upstream}: upstream sent a malformed stream chunk: {what}",
                status=502,
            ),
            out,
        )

    def _untranslatable(self, exc: Exception, out: list[Event]) -> None:
        """Last line of defence: an upstream shape the translator did not foresee."""
        if self.done:
            return
        log.warning("could not translate the upstream stream of %s", self._upstream, exc_info=exc)
        what = (
            "data nested too deeply" if isinstance(exc, RecursionError) else "an unexpected shape"
        )
        self._fail(
            RelayError(
                "api_error",
                f"{self._upstream}: upstream sent a stream the relay could not translate ({what})",
                status=502,
            ),
            out,
        )

    def _fail(self, error: RelayError, out: list[Event]) -> None:
        """R-E4: one ``error`` event, nothing after it; open blocks stay open."""
        out.append(error.event())
        self._error = error
        self.done = True

    def _sse(self, sse: SSEEvent, out: list[Event]) -> None:
        if sse.other:
            name, value = sse.other[0]
            if name == "error":
                self._fail(stream_error(value, upstream_name=self._upstream), out)
            else:
                line = f"{name}: {value}" if value else name
                self._fail(
                    RelayError(
                        "api_error",
                        f"{self._upstream}: upstream sent a malformed stream line: {line[:200]}",
                        status=502,
                    ),
                    out,
                )
            return
        data = sse.data
        if sse.event == "error":
            self._fail(stream_error(data, upstream_name=self._upstream), out)
            return
        template = self._template
        if (
            template is not None
            and data.startswith(template[0])
            and data.endswith(template[1])
            and len(data) > template[2]
            and self._open_kind == "text"
            and self._think is None
        ):
            # A chunk like the last plain text one but for its content string (see _learn).
            try:
                content = fast_loads(data[len(template[0]) - 1:len(data) - len(template[1]) + 1])
            except ValueError:
                content = None
            if content:
                out.append(
                    {"type": "content_block_delta", "index": self._open_index,
                     "delta": {"type": "text_delta", "text": content}}
                )
                self._out_chars += len(content)
                self._received = True
                self._tools.chunk_seq += 1
                return
        if not data or data.isspace():
            return
        if data[:6] == b"[DONE]":
            self._saw_done_marker = True
            if self._finish is not None:
                self._finalize(out)
            else:
                self._end_without_finish(out)
            return
        try:
            chunk = fast_loads(data)
        except ValueError:
            chunk = _NOT_PARSED
        if chunk is _NOT_PARSED:
            self._slow_json(data, out)
            return
        if type(chunk) is dict:
            if self._open_kind == "text" and self._think is None and self._plain_text(chunk, out):
                self._received = True
                self._tools.chunk_seq += 1
                if self._learning and len(data) <= _MAX_TEMPLATE:
                    self._learn(data, chunk)
                return
            self._chunk(chunk, out)
        else:
            self._fail(stream_error(chunk, upstream_name=self._upstream), out)

    def _slow_json(self, data: bytes, out: list[Event]) -> None:
        """A chunk orjson refused: :func:`loads` takes what it can, or the stream fails."""
        try:
            chunk = loads(data)
        except (RecursionError, JSONNestingError):
            self._malformed("JSON nested too deeply", out)
            return
        except ValueError:  # JSONDecodeError, or an integer too long to convert
            if self._lenient_tail:
                return
            self._fail(
                RelayError(
                    "api_error",
                    f"{self._upstream}: upstream sent invalid JSON in the stream: "
                    f"{data[:200].decode('utf-8', 'replace')}",
                    status=502,
                ),
                out,
            )
            return
        if isinstance(chunk, dict):
            self._chunk(chunk, out)
        else:
            self._fail(stream_error(chunk, upstream_name=self._upstream), out)

    def _chunk(self, chunk: dict[str, Any], out: list[Event]) -> None:
        self._received = True
        self._tools.chunk_seq += 1
        err = chunk.get("error")
        if err or chunk.get("object") == "error":
            self._fail(stream_error(chunk, upstream_name=self._upstream), out)
            return
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self._usage = usage  # cumulative: overwrite, never add (§9.1)
        choices = chunk.get("choices")
        if not choices:
            return
        if not isinstance(choices, list):
            self._malformed("'choices' is not a list", out)
            return
        for choice in choices:
            if not isinstance(choice, dict):
                self._malformed("an entry of 'choices' is not an object", out)
                return
            if choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if delta:
                if not isinstance(delta, dict):
                    self._malformed("'delta' is not an object", out)
                    return
                self._delta(delta, out)
                if self.done:
                    return
            reason = choice.get("finish_reason")
            if reason:
                if not isinstance(reason, str):
                    self._malformed("'finish_reason' is not a string", out)
                    return
                self._on_finish(reason, choice, chunk, out)
                if self.done:
                    return

    def _plain_text(self, chunk: dict[str, Any], out: list[Event]) -> bool:
        """
        The common chunk, while a text block is open: one choice whose delta holds only
        ``content`` text (and perhaps ``role``), no ``finish_reason``, no usage, no error.
        Appends its ``text_delta`` exactly as the general path would and returns True; any
        other chunk returns False with nothing done.
        """
        choices = chunk.get("choices")
        if (
            type(choices) is not list
            or len(choices) != 1
            or "error" in chunk
            or chunk.get("usage")
            or chunk.get("object") == "error"
        ):
            return False
        choice = choices[0]
        if type(choice) is not dict or choice.get("finish_reason") is not None:
            return False
        delta = choice.get("delta")
        if type(delta) is not dict or not delta.keys() <= _PLAIN_DELTA or "content" not in delta:
            return False
        content = delta["content"]
        if type(content) is not str or not content or choice.get("index", 0) not in (0, None):
            return False
        out.append(
            {"type": "content_block_delta", "index": self._open_index,
             "delta": {"type": "text_delta", "text": content}}
        )
        self._out_chars += len(content)
        return True

    def _learn(self, data: bytes, chunk: dict[str, Any]) -> None:
        """
        Remember the bytes around the content string of ``data``, a chunk that took the text
        fast path, so that the next chunks that differ from it only in that string skip the
        full JSON parse (upstreams repeat ``id``, ``model``, ``created``... in every chunk).

        Nothing is assumed about the layout: the string tokens of ``data`` are found by
        scanning its quotes, the candidate is the value token after a ``"content"`` key, and
        ``data`` with another string in its place must parse to ``chunk`` with only
        ``choices[0].delta.content`` changed. Then any chunk made of the same bytes around a
        valid JSON string token parses to ``chunk`` with that string as its content (the
        other tokens are the same), which is what :meth:`_sse` relies on. A few attempts per
        stream at most (a chunk that takes the text fast path did not fit the template, so
        a new one is learnt from it): an upstream whose chunks differ elsewhere (a per-chunk
        nonce) keeps the full parse.
        """
        self._learning -= 1
        content = chunk["choices"][0]["delta"]["content"]
        tokens = _string_tokens(data)
        probe_value, probe_token = ("\x01", b'"\\u0001"') if content == "\x00" else (
            "\x00", b'"\\u0000"')
        for key, key_end in tokens.items():
            if data[key:key_end + 1] != b'"content"':
                continue
            start = key_end + 1
            while data[start:start + 1] in _JSON_SPACE:
                start += 1
            if data[start:start + 1] != b":":
                continue
            start += 1
            while data[start:start + 1] in _JSON_SPACE:
                start += 1
            end = tokens.get(start)
            if end is None:
                continue
            prefix, suffix = data[:start + 1], data[end:]
            try:
                probe = fast_loads(prefix[:-1] + probe_token + suffix[1:])
                delta = probe["choices"][0]["delta"]
                if delta["content"] != probe_value:
                    continue
                delta["content"] = content
            except (ValueError, LookupError, TypeError):
                continue
            if probe == chunk:
                self._template = (prefix, suffix, len(prefix) + len(suffix))
                return

    def _on_finish(
        self, reason: str, choice: dict[str, Any], chunk: dict[str, Any], out: list[Event]
    ) -> None:
        if reason == "error":  # OpenRouter mid-stream error
            payload = choice.get("error") or chunk.get("error") or "generation failed"
            self._fail(stream_error({"error": payload}, upstream_name=self._upstream), out)
            return
        if reason == "insufficient_system_resource":  # DeepSeek: output incomplete
            self._fail(
                RelayError(
                    "overloaded_error",
                    f"{self._upstream}: generation interrupted: insufficient system resources",
                ),
                out,
            )
            return
        self._finish = reason
        self.finish_seen = True
        matched = choice.get("stop_reason")
        if not isinstance(matched, str):
            matched = choice.get("matched_stop")  # SGLang
        if isinstance(matched, str):
            self._vendor_stop = matched

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        source = self._reasoning_source
        if source is None:
            # R-S12: the first non-empty source wins for the whole stream (no duplicates).
            if delta.get("reasoning_details"):
                source = "reasoning_details"
            elif delta.get("reasoning_content"):
                source = "reasoning_content"
            elif delta.get("reasoning"):
                source = "reasoning"
            self._reasoning_source = source
        if source is not None:
            value = delta.get(source)
            if value:
                if source == "reasoning_details":
                    self._reasoning_details(value, out)
                elif isinstance(value, str):
                    self._thinking(value, out)
        content = delta.get("content")
        if content:
            if not isinstance(content, str):
                if not isinstance(content, list):
                    self._malformed("'content' is neither a string nor a list of parts", out)
                    return
                content = _parts_text(content)
            if content:
                if self._think is not None:
                    self._think_content(content, out)
                else:
                    self._text(content, out)
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self._refusal = True
            self._text(refusal, out)
        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                self._malformed("'tool_calls' is not a list", out)
                return
            self._tool_calls(calls, out)
        elif isinstance(delta.get("function_call"), dict):  # legacy single call
            self._tool_calls([{"index": 0, "function": delta["function_call"]}], out)

    # --- text and thinking -----------------------------------------------------------------

    def _open_block(self, kind: str, out: list[Event]) -> None:
        current = self._open_kind
        if current == "tool_use":
            self._end_tools(out)  # Q24: content after tool calls closes them for good
            if self.done:
                return
        elif current is not None:
            self._close_block(out)
        index = self._next_index
        self._next_index = index + 1
        self._open_kind = kind
        self._open_index = index
        if kind == "text":
            out.append(ev.text_block_start(index))
        else:
            self._orx_meta = None
            out.append(ev.thinking_block_start(index))

    def _close_block(self, out: list[Event]) -> None:
        """Close the open text or thinking block (thinking: signature first, R-S5)."""
        index = self._open_index
        if self._open_kind == "thinking":
            meta = self._orx_meta
            if meta is not None and any(k in meta for k in _ORX_KEYS):
                signature = encode_orx(meta)
            else:
                signature = self._signature_factory()
            out.append(ev.signature_delta(index, signature))
        out.append(ev.block_stop(index))
        self._open_kind = None

    def _text(self, text: str, out: list[Event]) -> None:
        if self._open_kind == "text":
            out.append(ev.text_delta(self._open_index, text))
            self._out_chars += len(text)
            return
        if text.isspace():  # R-S6: hold, never open a whitespace-only block
            self._pending_ws += text
            return
        self._open_block("text", out)
        if self.done:
            return
        if self._pending_ws:
            text = self._pending_ws + text
            self._pending_ws = ""
        out.append(ev.text_delta(self._open_index, text))
        self._out_chars += len(text)

    def _thinking(self, text: str, out: list[Event]) -> None:
        if self._open_kind != "thinking":
            self._open_block("thinking", out)
            if self.done:
                return
        out.append(ev.thinking_delta(self._open_index, text))
        self._out_chars += len(text)

    def _reasoning_details(self, items: Any, out: list[Event]) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "reasoning.encrypted":
                if self._open_kind is not None:
                    if self._open_kind == "tool_use":
                        self._end_tools(out)
                    else:
                        self._close_block(out)
                    if self.done:
                        return
                index = self._next_index
                self._next_index = index + 1
                block = {"type": "redacted_thinking", "data": encode_orx(item)}
                out.append(ev.block_start(index, block))
                out.append(ev.block_stop(index))
                continue
            text = item.get("summary") if kind == "reasoning.summary" else item.get("text")
            if isinstance(text, str) and text:
                self._thinking(text, out)
                if self.done:
                    return
            if self._open_kind == "thinking":
                meta = self._orx_meta
                if meta is None:
                    meta = self._orx_meta = {}
                for key, value in item.items():
                    if key not in ("text", "summary") and value is not None:
                        meta[key] = value

    def _think_content(self, text: str, out: list[Event]) -> None:
        """Split a leading inline ``<think>…</think>`` into a thinking block (R-S12.4)."""
        assert self._think is not None
        for thinking, piece in self._think.feed(text):
            if thinking:
                self._think_emit(piece, out)
            else:
                self._text(piece, out)
            if self.done:
                return

    def _think_emit(self, text: str, out: list[Event]) -> None:
        if self._open_kind != "thinking":
            text = text.lstrip()
        if text:
            self._thinking(text, out)

    # --- tool calls ------------------------------------------------------------------------

    def _tool_calls(self, frags: list[Any], out: list[Event]) -> None:
        for position, frag in enumerate(frags):
            if not isinstance(frag, dict):
                self._malformed("an entry of 'tool_calls' is not an object", out)
                return
            function = frag.get("function")
            if function is None:
                function = {}
            elif not isinstance(function, dict):
                self._malformed("a tool call's 'function' is not an object", out)
                return
            name = function.get("name")
            call = self._tools.call_for(frag, position, name)
            if call.state == CLOSED:
                log.debug("ignoring a fragment for an already closed tool call")
                continue
            fid = frag.get("id")
            if call.upstream_id is None and isinstance(fid, str) and fid:
                call.upstream_id = fid
                self._tools.by_id.setdefault(fid, call)
            if call.name is None and isinstance(name, str) and name:
                call.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                if arguments:
                    self._add_args(call, arguments, out)
            elif arguments is not None:  # Q4: an object instead of a string
                self._replace_args(call, dumps_str(arguments), out)
            if self.done:
                return
            if self._live is None and not self._complete_mode:
                self._flush_queue(out, final=False)
                if self.done:
                    return

    def _add_args(self, call: ToolCall, text: str, out: list[Event]) -> None:
        if self._cumulative and call.parts:
            so_far = "".join(call.parts)
            if text.startswith(so_far):  # Q5: fragments repeat the whole buffer
                text = text[len(so_far) :]
                if not text:
                    return
        call.parts.append(text)
        if self._complete_mode or call.broken:
            return
        checker = call.checker
        fwd = checker.feed(text)
        if checker.depth > MAX_ARGUMENT_DEPTH:  # no client parser should be handed this
            self._malformed(
                f"tool-call arguments nested more than {MAX_ARGUMENT_DEPTH} levels deep", out
            )
            return
        if not checker.valid:
            call.broken = True  # stop forwarding; repaired at close (R-S10)
        if fwd:
            call.fwd.append(fwd)
            if call.state == OPEN:
                call.sent = len(call.fwd)
                out.append(ev.input_json_delta(call.block_index, fwd))
                self._out_chars += len(fwd)
        if call.state == OPEN and checker.complete:
            self._close_live(out)
            if not self.done:
                self._flush_queue(out, final=False)

    def _replace_args(self, call: ToolCall, text: str, out: list[Event]) -> None:
        if not call.parts:
            self._add_args(call, text, out)
            return
        call.parts = [text]
        call.broken = True

    def _open_tool(self, call: ToolCall, out: list[Event]) -> None:
        if self._open_kind is not None:
            self._close_block(out)  # R-S3; never a tool block here (one live call at a time)
        self._pending_ws = ""
        self._tools.queue.remove(call)
        index = self._next_index
        self._next_index = index + 1
        call.block_index = index
        call.state = OPEN
        name = call.name or ""
        if self._names is not None:
            name = self._names.client(name)
        out.append(ev.tool_use_block_start(index, self._tool_ids.mint(call.upstream_id), name))
        self._tool_emitted = True
        self._open_kind = "tool_use"
        self._open_index = index
        if self._complete_mode:  # R-S11: one delta with the canonical JSON
            text = dumps_str(repair_json_object("".join(call.parts)))
            out.append(ev.input_json_delta(index, text))
            self._out_chars += len(text)
            out.append(ev.block_stop(index))
            call.state = CLOSED
            self._open_kind = None
            return
        self._live = call
        if call.sent < len(call.fwd):
            text = "".join(call.fwd[call.sent :])
            call.sent = len(call.fwd)
            out.append(ev.input_json_delta(index, text))
            self._out_chars += len(text)

    def _close_live(self, out: list[Event]) -> None:
        call = self._live
        if call is None:
            return
        index = call.block_index
        remainder = arguments_remainder(call)
        if remainder is None:
            self._fail(
                RelayError(
                    "api_error",
                    f"{self._upstream}: the model's tool-call arguments could not be repaired "
                    "consistently with what was already streamed",
                ),
                out,
            )
            return
        if remainder:
            out.append(ev.input_json_delta(index, remainder))
            self._out_chars += len(remainder)
        out.append(ev.block_stop(index))
        call.state = CLOSED
        self._live = None
        self._open_kind = None

    def _flush_queue(self, out: list[Event], *, final: bool) -> None:
        """Open waiting calls in first-seen order (R-S10); ``final`` closes each one too."""
        queue = self._tools.queue
        while self._live is None and queue:
            call = next((c for c in queue if c.name), None) if final else queue[0]
            if call is None or call.name is None:
                return
            self._open_tool(call, out)
            if self._live is not None and (final or call.checker.complete):
                self._close_live(out)
            if self.done:
                return

    def _end_tools(self, out: list[Event]) -> None:
        """Close the live call and emit every named waiting call, complete (Q24, finalize)."""
        if self._live is not None:
            self._close_live(out)
            if self.done:
                return
        self._flush_queue(out, final=True)

    # --- end -------------------------------------------------------------------------------

    def _end_without_finish(self, out: list[Event]) -> None:
        """The upstream ended (``[DONE]`` or EOF) but never said why (issue 7.11)."""
        if any(not self._arguments_closed(call) for call in self._tools.calls):
            what = "in the middle of a tool call's arguments"
        elif self._dialect.finish_reason_optional and self._usage is not None:
            self._finalize(out)
            return
        else:
            what = "without a finish reason"
        self._fail(
            RelayError(
                "api_error",
                f"{self._upstream}: the upstream ended the stream {what}; "
                "the answer may be incomplete",
                status=502,
            ),
            out,
        )

    def _arguments_closed(self, call: ToolCall) -> bool:
        """Whether a call's argument text is a whole JSON value (no repair needed)."""
        if call.state == CLOSED:
            return True
        if not call.broken and not self._complete_mode:
            return call.checker.complete
        try:
            loads("".join(call.parts))
        except (ValueError, RecursionError):
            return False
        return True

    def _finalize(self, out: list[Event]) -> None:
        """R-S13..R-S15: close everything, one ``message_delta``, ``message_stop``."""
        if self.done:
            return
        held = self._think.flush() if self._think is not None else None
        if held is not None:
            if held[0]:
                self._think_emit(held[1], out)
            else:
                self._text(held[1], out)
        if self._open_kind in ("text", "thinking"):
            self._close_block(out)
        self._end_tools(out)
        if self.done:
            return
        if self._tools.queue:
            log.info(
                "dropping %d upstream tool call(s) that never got a name", len(self._tools.queue)
            )
            self._tools.queue = []
        stop_reason, stop_sequence = self._stop_reason()
        out.append(ev.message_delta(stop_reason, stop_sequence, self._final_usage()))
        out.append(ev.message_stop())
        self.done = True

    def _stop_reason(self) -> tuple[str, str | None]:
        """§8.1 (R-M1), top to bottom."""
        reason = self._finish
        if reason == "length":
            return "max_tokens", None
        if self._tool_emitted:
            return "tool_use", None
        if reason == "content_filter" or self._refusal:
            return "refusal", None
        if reason in (None, "stop", "eos") and self._vendor_stop in self._stop_sequences:
            return "stop_sequence", self._vendor_stop
        if reason not in (None, "stop", "eos", "tool_calls", "function_call"):
            log.info("unknown finish_reason %r mapped to end_turn", reason)
        return "end_turn", None

    def _final_usage(self) -> dict[str, Any]:
        """Cumulative usage for ``message_delta``, additive (§9.1, R-U1, R-S14)."""
        return anthropic_usage(
            self._usage, input_tokens=self._input_tokens, out_chars=self._out_chars
        )


def _parts_text(content: Any) -> str:
    """Text of a content-parts list (some servers stream parts instead of a string)."""
    if not isinstance(content, list):
        return ""
    return "".join(
        p["text"]
        for p in content
        if isinstance(p, dict)
        and p.get("type") in ("text", None)
        and isinstance(p.get("text"), str)
    )


#: The largest chunk a template is learnt from (it is kept for the stream's life, and
#: learning scans its quotes).
_MAX_TEMPLATE = 2048
#: JSON's whitespace, one byte each (and b"" for the end of the text: no match follows).
_JSON_SPACE = (b" ", b"\t", b"\n", b"\r")


def _string_tokens(data: bytes) -> dict[int, int]:
    """
    The string tokens of the valid JSON text ``data``: the offset of each opening quote and
    of its closing quote. Outside strings JSON has no quote but a string's opening one, and
    inside a string a quote ends it unless an odd number of backslashes precede it.
    """
    tokens: dict[int, int] = {}
    find = data.find
    pos = 0
    while (start := find(b'"', pos)) >= 0:
        end = start
        while True:
            end = find(b'"', end + 1)
            if end < 0:
                return tokens
            slashes = 0
            while data[end - 1 - slashes] == 0x5C:
                slashes += 1
            if not slashes % 2:
                break
        tokens[start] = end
        pos = end + 1
    return tokens


def _new_message_id() -> str:
    return message_id()


if TYPE_CHECKING:

    def _satisfies_protocol(t: ChatStreamTranslator) -> StreamTranslator:
        return t
