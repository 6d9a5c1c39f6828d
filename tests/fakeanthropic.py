"""
A fake Anthropic-API upstream on loopback (HTTP/1.1 keep-alive, chunked SSE with
``event:`` lines), scripted per test, recording every request's path, headers and body.

It reuses the server of :mod:`tests.fakeupstream`; responders write exact bytes, so a test
can compare what the relay's client received with what the upstream sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs

from tests.fakeupstream import FakeOpenAI, FakeServer, Handler, Recorded, Responder, Sent

UPSTREAM_MODEL = "claude-upstream-1"


def message_start(model: str = UPSTREAM_MODEL, input_tokens: int = 12) -> dict[str, Any]:
    """A ``message_start`` as Anthropic sends it."""
    return {"type": "message_start", "message": {
        "id": "msg_01FakeUpstreamAAAAAAAAAAA", "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 1}}}


def text_events(text: str, *, pieces: int = 3, thinking: str | None = None,
                signature: str = "EqQBCkYIBRgCKkDsig", model: str = UPSTREAM_MODEL,
                tool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The events of an answer: optional thinking, text in ``pieces``, optional tool call."""
    out: list[dict[str, Any]] = [message_start(model), {"type": "ping"}]
    index = 0
    if thinking is not None:
        out += [
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "thinking_delta", "thinking": thinking}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "signature_delta", "signature": signature}},
            {"type": "content_block_stop", "index": 0},
        ]
        index = 1
    out.append({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}})
    step = max(1, -(-len(text) // pieces))
    for i in range(0, len(text), step):
        out.append({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text[i:i + step]}})
    out.append({"type": "content_block_stop", "index": index})
    stop = "end_turn"
    if tool is not None:
        index += 1
        out += [
            {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": tool["id"], "name": tool["name"], "input": {}}},
            {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(tool["input"])}},
            {"type": "content_block_stop", "index": index},
        ]
        stop = "tool_use"
    out += [
        {"type": "message_delta", "delta": {"type": "message_delta", "stop_reason": stop,
                                            "stop_sequence": None},
         "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    return out


def frame(event: dict[str, Any], *, eol: str = "\n") -> bytes:
    """One event as Anthropic frames it (spaces after separators, as the real API does)."""
    return (f"event: {event['type']}{eol}data: {json.dumps(event)}{eol}{eol}").encode()


def frames(events: Iterable[dict[str, Any]], *, eol: str = "\n") -> bytes:
    """Several events, framed."""
    return b"".join(frame(e, eol=eol) for e in events)


def message_json(text: str, *, model: str = UPSTREAM_MODEL) -> dict[str, Any]:
    """A non-streaming answer."""
    return {"id": "msg_01FakeUpstreamBBBBBBBBBBB", "type": "message", "role": "assistant",
            "model": model, "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 5}}


def raw_stream(data: bytes, *, pieces: int = 1, delay: float = 0.0, status: int = 200,
               headers: dict[str, str] | None = None, end: bool = True) -> Responder:
    """Send ``data`` as a chunked event stream, in ``pieces`` writes ``delay`` apart."""
    def respond(h: Handler, _: Recorded) -> None:
        h.send_response(status)
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("transfer-encoding", "chunked")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            if not h.write_chunk(data[i:i + step], None):
                return
            if delay:
                time.sleep(delay)
        if end:
            h.end_chunks()
        else:
            h.close_connection = True
            h.wfile.flush()
    return respond


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None
                ) -> Responder:
    """A JSON answer (a message, an error, a count)."""
    def respond(h: Handler, _: Recorded) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
    return respond


def error_answer(status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> Responder:
    """An Anthropic error body."""
    return json_answer({"type": "error", "error": {"type": kind, "message": message},
                        "request_id": "req_upstream0123456789"}, status, headers)


def endless_deltas(sent: Sent, frame_bytes: int = 16384, limit: int = 1 << 30) -> Responder:
    """A text answer whose deltas keep coming as fast as the relay takes them."""
    def respond(h: Handler, _: Recorded) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        head = frames([message_start(), {"type": "ping"}, {
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}])
        h.write_chunk(head, sent)
        delta = frame({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": "x" * 200}})
        block = delta * max(1, frame_bytes // len(delta))
        while sent.bytes < limit:
            if not h.write_chunk(block, sent):
                return
        h.write_chunk(frames(text_events("")[-3:]), sent)
        h.end_chunks()
        sent.finished = True
    return respond


class AnthropicHandler(Handler):
    def do_GET(self) -> None:
        rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, None,
                       self.number)
        self.server.fake.requests.append(rec)
        self.server.fake.next_responder(rec)(self, rec)


@attrs.define(eq=False)
class FakeAnthropic(FakeOpenAI):
    """The fake; ``url`` is the base URL (``/v1/messages`` is appended by the relay)."""

    def start(self) -> FakeAnthropic:
        self.server = FakeServer(("127.0.0.1", 0), AnthropicHandler)
        self.server.fake = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_responder(self, rec: Recorded) -> Responder:
        if self.script:
            return self.script.popleft()
        if self.default is not None:
            return self.default
        if rec.path.startswith("/v1/messages/count_tokens"):
            return json_answer({"input_tokens": 42})
        if isinstance(rec.body, dict) and not rec.body.get("stream"):
            return json_answer(message_json("Hello from the fake Anthropic upstream."))
        return raw_stream(frames(text_events("Hello from the fake Anthropic upstream.")))
