# -*- test-case-name: tests.protocol.test_passthrough -*-
"""
Anthropic pass-through (mapping.md §13, rules R-P…): the sans-IO half of ``kind = "anthropic"``.

Requests: the client's body is forwarded as it came, except for the edits an upstream needs
(the routed model, R-P3; configured field strips; thinking blocks signed by the relay for
another backend, which Anthropic would reject, R-T1) and the beta list the provider allows.

Streams: :class:`PassThroughTranslator` finds each SSE frame's extent in the raw bytes and
hands on an event that still carries those bytes (:class:`~txrelay.protocol.sse.RawEvent`),
so the SSE writer sends them unchanged; only ``message_start`` is re-encoded, to echo the
requested model name (R-X5). A filter a stage puts on the reply sees plain events and what it
returns is encoded again (see :class:`~txrelay.protocol.sse.RawEvent`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from txrelay.protocol.errors import STATUS_FOR_TYPE, RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps, loads
from txrelay.protocol.sse import DEFAULT_MAX_EVENT_SIZE, RawEvent, SSEParser

#: Prefix of every signature (and ``redacted_thinking.data``) the relay mints (§10.1).
RELAY_SIGNATURE_PREFIX = "txr1."

#: Response headers an Anthropic upstream's answer keeps on its way to the client (R-P5).
_FORWARDED = ("retry-after", "x-should-retry")
_FORWARDED_PREFIXES = ("anthropic-ratelimit-",)


def forwarded_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The upstream response headers the client gets too (lower-case names)."""
    return [(k, v) for k, v in headers.items()
            if k in _FORWARDED or k.startswith(_FORWARDED_PREFIXES)]


# --- requests -------------------------------------------------------------------------


@attrs.frozen
class BetaPolicy:
    """Which ``anthropic-beta`` values an upstream is sent."""

    strip: frozenset[str] = frozenset()
    #: beta → replacement (an empty replacement strips it).
    rewrite: Mapping[str, str] = attrs.Factory(dict)

    def apply(self, header: str | None) -> str | None:
        """The header value to send (None: send no header)."""
        if not header:
            return None
        out: list[str] = []
        for raw in header.split(","):
            beta = raw.strip()
            if not beta or beta in self.strip:
                continue
            beta = self.rewrite.get(beta, beta)
            if beta and beta not in out:
                out.append(beta)
        return ",".join(out) or None


def is_relay_block(block: Any) -> bool:
    """A thinking or redacted_thinking block the relay signed (for another backend)."""
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind == "thinking":
        value = block.get("signature")
    elif kind == "redacted_thinking":
        value = block.get("data")
    else:
        return False
    return isinstance(value, str) and value.startswith(RELAY_SIGNATURE_PREFIX)


def _strip_relay_thinking(messages: list[Any]) -> tuple[list[Any], int]:
    """``messages`` without relay-signed thinking; assistant turns left empty are dropped."""
    removed = 0
    out: list[Any] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list) or not any(is_relay_block(b) for b in content):
            out.append(m)
            continue
        kept = [b for b in content if not is_relay_block(b)]
        removed += len(content) - len(kept)
        if kept:
            out.append({**m, "content": kept})
        # An assistant turn of relay thinking only: nothing of it can go to Anthropic
        # (consecutive user turns are merged by the API).
    return out, removed


def _needs_thinking_off(messages: list[Any]) -> bool:
    """
    R-T1: with thinking on, Anthropic wants the last assistant turn that called a tool to
    start with a thinking block; after relay thinking was dropped it may not.
    """
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "assistant":
            continue
        content = m.get("content")
        if not isinstance(content, list):
            return False
        has_tool = any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content)
        first = content[0].get("type") if content and isinstance(content[0], dict) else None
        return has_tool and first not in ("thinking", "redacted_thinking")
    return False


def _drop_path(body: dict[str, Any], path: str) -> bool:
    head, dot, rest = path.partition(".")
    if not dot:
        if head not in body:
            return False
        del body[head]
        return True
    inner = body.get(head)
    if not isinstance(inner, dict):
        return False
    inner = dict(inner)  # the caller's body is not changed
    if not _drop_path(inner, rest):
        return False
    if inner:
        body[head] = inner
    else:
        del body[head]
    return True


def edit_body(
    body: dict[str, Any], *, model: str | None, strip_fields: Sequence[str] = (),
    set_fields: Mapping[str, Any] | None = None, max_tokens: int | None = None,
) -> tuple[dict[str, Any], bool]:
    """
    The body to send upstream and whether it differs from ``body`` (which is not changed).

    :param model: the upstream model id, or None to remove ``model`` (Vertex AI takes it
        in the URL).
    :param strip_fields: top-level fields (or dotted paths) the upstream rejects.
    :param set_fields: fields to set (Vertex AI's ``anthropic_version``).
    :param max_tokens: the model's configured ceiling: a larger ``max_tokens`` is clamped.
    """
    out = dict(body)
    changed = False
    if model is None:
        changed = out.pop("model", None) is not None
    elif out.get("model") != model:
        out["model"] = model
        changed = True
    for path in strip_fields:
        changed = _drop_path(out, path) or changed
    asked = out.get("max_tokens")
    if max_tokens is not None and isinstance(asked, int) and asked > max_tokens:
        out["max_tokens"] = max_tokens
        changed = True
    messages = out.get("messages")
    if isinstance(messages, list):
        kept, removed = _strip_relay_thinking(messages)
        if removed:
            out["messages"] = kept
            changed = True
            thinking = out.get("thinking")
            if (isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
                    and _needs_thinking_off(kept)):
                out["thinking"] = {"type": "disabled"}
                _drop_thinking_edits(out)
    for key, value in (set_fields or {}).items():
        if out.get(key) != value:
            out[key] = value
            changed = True
    return out, changed


def _drop_thinking_edits(body: dict[str, Any]) -> None:
    """Context-management edits that clear thinking need thinking on: drop them too."""
    cm = body.get("context_management")
    if not isinstance(cm, dict) or not isinstance(cm.get("edits"), list):
        return
    edits = [e for e in cm["edits"]
             if not (isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking"))]
    if edits:
        body["context_management"] = {**cm, "edits": edits}
    else:
        del body["context_management"]


def request_bytes(raw: bytes, *, model: str | None, strip_fields: Sequence[str] = (),
                  set_fields: Mapping[str, Any] | None = None,
                  max_tokens: int | None = None) -> bytes:
    """
    The upstream body for the client's (already validated) ``raw`` body: ``raw`` itself
    when no edit applies (R-P1), else the edited body re-encoded.
    """
    body = loads(raw)
    if not isinstance(body, dict):  # the validator let only objects through
        raise RelayError("invalid_request_error", "request body must be a JSON object")
    edited, changed = edit_body(body, model=model, strip_fields=strip_fields,
                                set_fields=set_fields, max_tokens=max_tokens)
    return dumps(edited) if changed else raw


# --- errors ---------------------------------------------------------------------------


@attrs.frozen
class UpstreamAnthropicError(RelayError):
    """
    An Anthropic upstream's error, returned as it came (Claude Code's recovery matches on
    its wording): the upstream's status, its error body (with the message as redaction left
    it) and its ``retry-after``/``x-should-retry``/``anthropic-ratelimit-*`` headers.
    """

    upstream_body: Mapping[str, Any] | None = attrs.field(default=None, kw_only=True)

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The upstream's body, or the standard one when it sent none we could read."""
        if self.upstream_body is None:
            return super().body(request_id)
        out = dict(self.upstream_body)
        error = out.get("error")
        if isinstance(error, dict):
            out["error"] = {**error, "message": self.message}
        return out


_TYPE_FOR_STATUS = {v: k for k, v in STATUS_FOR_TYPE.items()}


def _type_for(status: int) -> str:
    if status in _TYPE_FOR_STATUS:
        return _TYPE_FOR_STATUS[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def upstream_error(status: int, body: bytes, headers: Mapping[str, str], *,
                   upstream_name: str) -> RelayError:
    """The client's error for an Anthropic upstream's non-2xx answer (never raises)."""
    forwarded = tuple(forwarded_headers(headers))
    decoded: Any = None
    try:
        decoded = loads(body) if body.strip() else None
    except (JSONDecodeError, ValueError):
        decoded = None
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        if isinstance(error.get("type"), str) and decoded.get("type") == "error":
            return UpstreamAnthropicError(error["type"], error["message"], status=status,
                                          headers=forwarded, upstream_body=decoded)
        # Another shape with a message (Vertex AI's own errors are Google's): keep the
        # wording in Anthropic's shape.
        return RelayError(_type_for(status), f"{upstream_name}: {error['message']}",
                          status=status if status >= 400 else 502, headers=forwarded)
    # Not JSON (a proxy's HTML page, an empty body): say what came.
    kind = _type_for(status)
    text = body.decode("utf-8", "replace").strip()[:2000]
    detail = f": {text}" if text else ""
    return RelayError(kind, f"{upstream_name}: upstream answered HTTP {status}{detail}",
                      status=status if status >= 400 else 502, headers=forwarded)


def event_error(error: Mapping[str, Any], *, before_commit: bool) -> RelayError:
    """An upstream ``event: error``: the HTTP status Anthropic gives its type."""
    kind = error.get("type") if isinstance(error.get("type"), str) else "api_error"
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    status = STATUS_FOR_TYPE.get(str(kind), 500)
    body = {"type": "error", "error": dict(error)} if before_commit else None
    return UpstreamAnthropicError(str(kind), str(message), status=status, upstream_body=body)


# --- streams --------------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


class FrameSplitter:
    """
    Finds where each SSE event ends in raw bytes (a blank line after a line end: CRLF, LF
    or CR, R-X15), keeping the bytes as they came. Linear in its input: each byte is
    searched once however the reads split it.
    """

    __slots__ = ("_buf", "_lf_only", "_line_start", "_max", "_scan")

    def __init__(self, max_frame: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._buf = bytearray()
        self._scan = 0
        self._line_start = 0
        self._max = max_frame
        #: No CR seen yet: events end at the first LF LF (what Anthropic sends).
        self._lf_only = True

    def feed(self, data: bytes) -> list[bytes]:
        """The frames ``data`` completes (each with its blank line)."""
        self._buf += data
        if self._lf_only and 0x0D in data:  # by value: no TypeError made and dropped
            self._lf_only = False
            # From here on the general scan, from the start of the incomplete event.
            self._scan = self._line_start = 0
        frames = self._split_lf() if self._lf_only else self._split(final=False)
        if len(self._buf) > self._max:
            raise ValueError(f"a stream event is larger than the {self._max}-byte limit")
        return frames

    def finish(self) -> tuple[list[bytes], bytes]:
        """
        End of input: the frames completed by it (a CR at the very end is a line end now)
        and what is left (a last event without its blank line).
        """
        frames = [] if self._lf_only else self._split(final=True)
        rest, self._buf = bytes(self._buf), bytearray()
        self._scan = self._line_start = 0
        return frames, rest

    def _split_lf(self) -> list[bytes]:
        buf = self._buf
        frames: list[bytes] = []
        start = 0
        pos = self._scan
        while (end := buf.find(b"\n\n", pos)) >= 0:
            frames.append(bytes(buf[start:end + 2]))
            start = pos = end + 2
        if start:
            del buf[:start]
        self._scan = max(0, len(buf) - 1)
        return frames

    def _split(self, *, final: bool) -> list[bytes]:
        buf = self._buf
        frames: list[bytes] = []
        start = 0
        pos = self._scan
        line_start = self._line_start
        while True:
            m = _LINE_END.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            if not final and m.group() == b"\r" and m.end() == len(buf):
                pos = m.start()  # maybe half of a CRLF: wait for the next byte
                break
            if m.start() == line_start:  # an empty line: the event ends here
                frames.append(bytes(buf[start:m.end()]))
                start = m.end()
            line_start = pos = m.end()
        if start:
            del buf[:start]
            pos -= start
            line_start -= start
        self._scan, self._line_start = pos, line_start
        return frames


def _simple_data(frame: bytes) -> bytes | None:
    """The data of a frame that is exactly ``event: …`` + one ``data: …`` line, else None."""
    if not frame.startswith(b"event: ") or not frame.endswith(b"\n\n"):
        return None
    nl = frame.find(b"\n")
    if not frame.startswith(b"data: ", nl + 1) or frame.find(b"\n", nl + 1) != len(frame) - 2:
        return None
    if 0x0D in frame:  # b"\r", tested by value (see txrelay.protocol.sse)
        return None
    return frame[nl + 7:-2]


class PassThroughTranslator:
    """
    An Anthropic upstream's event stream, passed on frame by frame (a
    :class:`~txrelay.protocol.translator.StreamTranslator`).

    Each event keeps its original bytes; ``message_start`` gets the requested model name.
    An upstream ``error`` event ends the stream (before the commit it becomes the HTTP
    error Anthropic's status table gives its type); a body that ends before
    ``message_stop`` is a cut stream.
    """

    def __init__(self, *, model: str | None, upstream_name: str,
                 max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self.model = model
        self.upstream_name = upstream_name
        self._frames = FrameSplitter(max_event_size)
        self._parser = SSEParser(max_event_size=max_event_size)
        self._done = False
        self._committed = False
        #: The error the stream ended with, for :class:`UpstreamSource` (its HTTP status).
        self.error: RelayError | None = None
        #: ``message_delta`` came: only ``message_stop`` is still due.
        self.finish_seen = False

    @property
    def done(self) -> bool:
        """Whether ``message_stop`` or an ``error`` event went by."""
        return self._done

    def start(self) -> list[Event]:
        """Nothing: the upstream sends its own ``message_start``."""
        return []

    def feed(self, data: bytes) -> list[Event]:
        """The events the bytes complete."""
        if self._done:
            return []
        try:
            frames = self._frames.feed(data)
        except ValueError as e:
            return self._fail(str(e))
        return self._events(frames)

    def finish(self) -> list[Event]:
        """End of the body: a last frame without its blank line, or a cut stream."""
        if self._done:
            return []
        frames, rest = self._frames.finish()
        out = self._events(frames)
        if rest.strip() and not self._done:
            # The blank line the last event lacks is added, so the client dispatches it.
            out += self._events([rest + b"\n\n"])
        if not self._done:
            out += self._fail("the upstream closed the stream before message_stop")
        return out

    def _events(self, frames: list[bytes]) -> list[Event]:
        out: list[Event] = []
        for frame in frames:
            data = _simple_data(frame)
            if data is not None:  # the common frame: "event: x\ndata: {…}\n\n"
                event = self._event(data, frame)
                if event is None:
                    return [*out, *self._fail("the upstream sent an event that is not "
                                              "Anthropic's JSON")]
                out.append(event)
                if self._note(event):
                    return out
                continue
            # A frame ending in CR: the LF makes the parser dispatch now, not at the next read.
            parse = frame + b"\n" if frame.endswith(b"\r") else frame
            for sse in self._parser.feed(parse):
                event = self._event(sse.data, frame)
                if event is None:
                    return [*out, *self._fail("the upstream sent an event that is not "
                                              "Anthropic's JSON")]
                out.append(event)
                if self._note(event):
                    return out
        return out

    def _note(self, event: Event) -> bool:
        """Follow the stream's state; whether it ended with ``event``."""
        kind = event["type"]
        if kind == "error":
            self._done = True
            self.error = event_error(event.get("error") or {},
                                     before_commit=not self._committed)
            return True
        if kind in ("content_block_start", "content_block_delta", "message_delta"):
            self._committed = True
        if kind == "message_delta":
            self.finish_seen = True
        elif kind == "message_stop":
            self._done = True
            return True
        return False

    def _event(self, data: bytes, frame: bytes) -> Event | None:
        try:
            decoded = loads(data)
        except (JSONDecodeError, ValueError):
            return None
        if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
            return None
        if decoded["type"] == "message_start" and self.model is not None:
            message = decoded.get("message")
            if isinstance(message, dict) and message.get("model") != self.model:
                decoded["message"] = {**message, "model": self.model}
                return decoded  # re-encoded: the one rewrite R-X5 asks for
        return RawEvent(decoded, raw=frame)

    def _fail(self, message: str) -> list[Event]:
        self._done = True
        self.error = RelayError("api_error", f"{self.upstream_name}: {message}", status=502)
        return [{"type": "error", "error": self.error.error_object()}]


def response_body(raw: bytes, *, model: str | None, upstream_name: str) -> dict[str, Any]:
    """A non-streaming 2xx answer with the requested model echoed (R-X5)."""
    try:
        body = loads(raw)
    except (JSONDecodeError, ValueError):
        raise RelayError("api_error", f"{upstream_name}: upstream answered with something "
                         "that is not JSON", status=502) from None
    if not isinstance(body, dict) or body.get("type") != "message":
        raise RelayError("api_error", f"{upstream_name}: upstream answered 2xx without a "
                         "message", status=502)
    if model is not None:
        body["model"] = model
    return body


#: Block types whose ``input`` streams as ``input_json_delta`` (the rest start whole).
_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def message_events(message: dict[str, Any]) -> list[Event]:
    """
    A non-streaming answer as the events that stream it, so that stage filters and
    end-of-stream hooks apply to it as to a stream; folding them
    (:class:`~txrelay.protocol.accumulate.MessageAccumulator`) gives ``message`` back,
    every field kept.
    """
    head = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    usage = message.get("usage")
    events: list[Event] = [{"type": "message_start", "message": head}, {"type": "ping"}]
    for index, block in enumerate(message.get("content") or ()):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        deltas: list[dict[str, Any]] = []
        start = block
        if kind == "text" and isinstance(block.get("text"), str):
            start = {**block, "text": ""}
            if block["text"]:
                deltas.append({"type": "text_delta", "text": block["text"]})
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            start = {**block, "thinking": "", "signature": ""}
            if block["thinking"]:
                deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
            deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
        elif kind in _INPUT_BLOCKS and isinstance(block.get("input"), dict):
            start = {**block, "input": {}}
            if block["input"]:
                deltas.append({"type": "input_json_delta",
                               "partial_json": dumps(block["input"]).decode("utf-8")})
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message.get("stop_reason"),
             "stop_sequence": message.get("stop_sequence")}
    end: Event = {"type": "message_delta", "delta": delta}
    if isinstance(usage, dict):
        end["usage"] = usage
    events += [end, {"type": "message_stop"}]
    return events
