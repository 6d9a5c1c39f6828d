"""
A fake OpenAI-compatible Chat Completions server on loopback, speaking the real wire protocol
(HTTP/1.1 keep-alive, chunked SSE, ``data: [DONE]``), scripted per test.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs


@attrs.define
class Recorded:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: Any
    connection: int


@attrs.define
class Sent:
    """What a streaming responder managed to send before it ended."""

    bytes: int = 0
    disconnected_at: float | None = None
    finished: bool = False


Responder = Callable[["Handler", Recorded], None]


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, Any] | None = None, choices: bool = True) -> dict[str, Any]:
    """One ``chat.completion.chunk``."""
    out: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                           "created": 1700000000, "model": "fake-model"}
    out["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices \
        else []
    out["usage"] = usage
    return out


def text_stream(text: str, pieces: int = 4, usage: dict[str, Any] | None = None
                ) -> list[dict[str, Any] | str]:
    """The chunks of a plain text answer, with a trailing usage chunk."""
    step = max(1, -(-len(text) // pieces))
    out: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": text[i:i + step]}) for i in range(0, len(text), step)]
    out.append(chunk({}, "stop"))
    out.append(chunk(choices=False, usage=usage or {
        "prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 60}}))
    return out


def tool_stream(name: str, arguments: str, *, call_id: str = "call_abc", pieces: int = 5,
                text: str = "") -> list[dict[str, Any] | str]:
    """The chunks of one tool call (arguments in ``pieces`` fragments)."""
    out: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": None})]
    if text:
        out.append(chunk({"content": text}))
    out.append(chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                      "function": {"name": name, "arguments": ""}}]}))
    step = max(1, -(-len(arguments) // pieces))
    out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + step]}}]})
            for i in range(0, len(arguments), step)]
    out.append(chunk({}, "tool_calls"))
    out.append(chunk(choices=False, usage={"prompt_tokens": 50, "completion_tokens": 20,
                                           "total_tokens": 70}))
    return out


def sse(chunks: Iterable[dict[str, Any] | str], *, delay: float = 0.0, done: bool = True,
        status: int = 200, sent: Sent | None = None) -> Responder:
    """Stream ``chunks`` as SSE (a ``str`` is written as raw lines, e.g. ``": keep-alive"``)."""
    def respond(h: Handler, _: Recorded) -> None:
        h.start(status, "text/event-stream")
        for c in chunks:
            data = (c + "\n\n") if isinstance(c, str) else f"data: {json.dumps(c)}\n\n"
            if not h.write_chunk(data.encode(), sent):
                return
            if delay:
                time.sleep(delay)
        if done:
            h.write_chunk(b"data: [DONE]\n\n", sent)
        h.end_chunks()
        if sent is not None:
            sent.finished = True
    return respond


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  raw: bytes | None = None, content_type: str = "application/json") -> Responder:
    """A plain (non-streaming) answer."""
    def respond(h: Handler, _: Recorded) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
    return respond


def endless(sent: Sent, frame_bytes: int = 16384, limit: int = 1 << 30) -> Responder:
    """Stream content chunks as fast as the relay takes them, up to ``limit`` bytes."""
    def respond(h: Handler, _: Recorded) -> None:
        h.start(200, "text/event-stream")
        h.write_chunk(f"data: {json.dumps(chunk({'role': 'assistant', 'content': ''}))}\n\n"
                      .encode(), sent)
        piece = "x" * 200
        frame = (f"data: {json.dumps(chunk({'content': piece}))}\n\n" * (
            frame_bytes // 300)).encode()
        while sent.bytes < limit:
            if not h.write_chunk(frame, sent):
                return
        h.write_chunk(f"data: {json.dumps(chunk({}, 'stop'))}\n\ndata: [DONE]\n\n".encode(), sent)
        h.end_chunks()
        sent.finished = True
    return respond


def stall(seconds: float, then: Responder) -> Responder:
    """Wait before answering (a slow first byte)."""
    def respond(h: Handler, r: Recorded) -> None:
        time.sleep(seconds)
        then(h, r)
    return respond


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.number = self.server.connections

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                       self.number)
        self.server.fake.requests.append(rec)
        self.server.fake.next_responder(rec)(self, rec)

    def start(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()

    def write_chunk(self, data: bytes, sent: Sent | None) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            if sent is not None and sent.disconnected_at is None:
                sent.disconnected_at = time.monotonic()
            self.close_connection = True
            return False
        if sent is not None:
            sent.bytes += len(data)
        return True

    def end_chunks(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI
    connections = 0
    lock = threading.Lock()


@attrs.define(eq=False)
class FakeOpenAI:
    """The fake server; ``push`` responders in the order requests will arrive."""

    default: Responder | None = None
    requests: list[Recorded] = attrs.Factory(list)
    script: deque[Responder | Callable[[Recorded], Responder]] = attrs.Factory(deque)
    server: FakeServer | None = None

    def start(self) -> FakeOpenAI:
        self.server = FakeServer(("127.0.0.1", 0), Handler)
        self.server.fake = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def push(self, *responders: Responder) -> None:
        self.script.extend(responders)

    def next_responder(self, rec: Recorded) -> Responder:
        if self.script:
            return self.script.popleft()
        if self.default is not None:
            return self.default
        return sse(text_stream("Hello from the fake upstream."))


@attrs.define(eq=False)
class PromptCache:
    """
    A simulated upstream prompt cache, scoped like real ones: per upstream key (the
    ``authorization`` header) and model. Each message counts 100 prompt tokens; the cached
    tokens are those of the longest message prefix an earlier request of the same scope
    had, reported as ``usage.prompt_tokens_details.cached_tokens``.
    """

    seen: dict[tuple[str, str], list[list[str]]] = attrs.Factory(dict)
    lock: threading.Lock = attrs.Factory(threading.Lock)
    #: (key, model, cached tokens) of every request answered.
    log: list[tuple[str, str, int]] = attrs.Factory(list)

    def responder(self, text: str = "Cached hello.") -> Responder:
        def respond(h: Handler, rec: Recorded) -> None:
            body = rec.body if isinstance(rec.body, dict) else {}
            scope = (rec.headers.get("authorization", ""), str(body.get("model")))
            messages = [json.dumps(m, sort_keys=True) for m in body.get("messages", [])]
            with self.lock:
                earlier = self.seen.setdefault(scope, [])
                best = 0
                for prefix in earlier:
                    n = 0
                    while n < min(len(prefix), len(messages)) and prefix[n] == messages[n]:
                        n += 1
                    best = max(best, n)
                earlier.append(messages)
                self.log.append((scope[0], scope[1], best * 100))
            prompt = 100 * len(messages)
            sse(text_stream(text, usage={
                "prompt_tokens": prompt, "completion_tokens": 3,
                "total_tokens": prompt + 3,
                "prompt_tokens_details": {"cached_tokens": best * 100}}))(h, rec)
        return respond


def rate_limited(retry_after: str | None = "30", status: int = 429) -> Responder:
    """An OpenAI-shaped 429 (or other status) error, with ``retry-after`` when given."""
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return json_response({"error": {"message": f"fake {status}", "type": kind,
                                    "code": kind}}, status=status,
                         headers={"retry-after": retry_after} if retry_after else None)
