"""
The upstream edge against real sockets: failures in plain words, a client that leaves, stale
pooled connections, context overflow and bodies that are not event streams. The real relay
(twistd) in front of the fake Chat Completions server and a raw socket server.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import (
    FakeOpenAI,
    Handler,
    Recorded,
    Sent,
    json_response,
    sse,
    stall,
    text_stream,
)
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

#: What must never reach a client: Python reprs and Twisted's exception names.
_INTERNALS = ("Failure", "<", "ResponseFailed", "ResponseNeverReceived", "ConnectionLost",
              "ConnectionDone", "Error(", "twisted")


class RawServer:
    """A TCP server that misbehaves in a scripted way on each connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.behaviour: Callable[[socket.socket], None] = self.reset
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
        except OSError:
            conn.close()
            return
        self.behaviour(conn)

    @staticmethod
    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    @staticmethod
    def mid_headers(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        time.sleep(0.05)
        conn.close()

    def close(self) -> None:
        self.sock.close()


def close_without_answer(h: Handler, _: Recorded) -> None:
    """Read the request, then close the connection without a byte of answer."""
    h.close_connection = True
    h.wfile.flush()


def slow_json_body(sent: Sent) -> Callable[[Handler, Recorded], None]:
    """Headers at once, then one byte of body every 50 ms (a long generation)."""
    def respond(h: Handler, _: Recorded) -> None:
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", "100000")
        h.end_headers()
        try:
            for _ in range(400):
                h.wfile.write(b" ")
                h.wfile.flush()
                sent.bytes += 1
                time.sleep(0.05)
        except OSError:
            sent.disconnected_at = time.monotonic()
            h.close_connection = True
            return
        sent.finished = True
    return respond


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def raw() -> Iterator[RawServer]:
    r = RawServer()
    yield r
    r.close()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, raw: RawServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "idle_connection_timeout": 30,
                    "timeouts": {"connect": 2, "first_byte": 5, "idle": 3}},
                   {"name": "brief", "kind": "openai-chat", "base_url": fake.url,
                    "idle_connection_timeout": 1},
                   {"name": "lone", "kind": "openai-chat", "base_url": fake.url},
                   {"name": "raw", "kind": "openai-chat", "base_url": raw.url},
                   {"name": "dead", "kind": "openai-chat", "base_url": "http://127.0.0.1:9/v1"},
                   {"name": "tls", "kind": "openai-chat",
                    "base_url": fake.url.replace("http://", "https://")}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up", "upstream_model": "gpt-fake"},
                {"id": "small-context", "provider": "up", "max_input_tokens": 50},
                {"id": "brief-model", "provider": "brief"},
                {"id": "lone-model", "provider": "lone"},
                {"id": "raw-model", "provider": "raw"},
                {"id": "dead-model", "provider": "dead"},
                {"id": "tls-model", "provider": "tls"}],
    )
    r = start_relay(tmp_path_factory.mktemp("edges"), cfg)
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def clean_script(fake: FakeOpenAI) -> Iterator[None]:
    fake.script.clear()
    yield
    fake.script.clear()


def ask(client: anthropic.Anthropic, model: str = "claude-sonnet-4-6", *, stream: bool = False,
        text: str = "hi") -> str:
    messages: Any = [{"role": "user", "content": text}]
    if stream:
        with client.messages.stream(model=model, max_tokens=50, messages=messages) as s:
            return "".join(s.text_stream)
    reply = client.messages.create(model=model, max_tokens=50, messages=messages)
    return reply.content[0].text  # type: ignore[union-attr]


def failure_of(client: anthropic.Anthropic, model: str, *, stream: bool = False,
               text: str = "hi") -> anthropic.APIStatusError:
    with pytest.raises(anthropic.APIStatusError) as info:
        ask(client, model, stream=stream, text=text)
    return info.value


def plain(error: anthropic.APIStatusError) -> str:
    message: str = error.body["error"]["message"]  # type: ignore[index]
    for internal in _INTERNALS:
        assert internal not in message, message
    return message


@pytest.mark.parametrize("stream", [False, True])
def test_connection_refused_in_plain_words(client: anthropic.Anthropic, stream: bool) -> None:
    error = failure_of(client, "dead-model", stream=stream)
    assert error.status_code == 502
    assert plain(error) == "dead: upstream connection failed: connection refused"


def test_tls_failure_in_plain_words(client: anthropic.Anthropic) -> None:
    # HTTPS to a plain-HTTP server: the handshake fails before a byte of the request leaves.
    error = failure_of(client, "tls-model", stream=True)
    assert error.status_code == 502
    message = plain(error)
    assert message == ("tls: upstream connection failed: TLS: the upstream does not speak TLS "
                       "on this port"), message


@pytest.mark.parametrize("stream", [False, True])
def test_reset_before_answering_in_plain_words(client: anthropic.Anthropic, raw: RawServer,
                                               stream: bool) -> None:
    raw.behaviour = RawServer.reset
    error = failure_of(client, "raw-model", stream=stream)
    assert error.status_code == 502
    assert plain(error) == ("raw: upstream connection failed: the connection was reset "
                            "before the upstream answered")


def test_close_in_the_middle_of_headers_in_plain_words(client: anthropic.Anthropic,
                                                       raw: RawServer) -> None:
    raw.behaviour = RawServer.mid_headers
    error = failure_of(client, "raw-model", stream=True)
    assert error.status_code == 502
    message = plain(error)
    assert message.startswith("raw: upstream connection failed: the answer broke off in "
                              "its response headers"), message


def test_a_fresh_connection_closed_before_answering_is_not_retried(
        client: anthropic.Anthropic, fake: FakeOpenAI, relay: Relay) -> None:
    # A new connection (this provider serves nothing else): the POST may have been
    # processed, so it is not sent twice.
    fake.push(close_without_answer)
    before = len(fake.requests)
    error = failure_of(client, "lone-model")
    assert error.status_code == 502
    assert plain(error) == ("lone: upstream connection failed: the upstream closed the "
                            "connection before answering")
    assert len(fake.requests) == before + 1


def test_a_stale_pooled_connection_is_retried_once_on_a_new_one(
        client: anthropic.Anthropic, fake: FakeOpenAI, relay: Relay) -> None:
    fake.push(sse(text_stream("first")))
    assert ask(client, stream=True) == "first"
    newest = max(r.connection for r in fake.requests)
    time.sleep(0.2)  # the upstream connection is back in the pool
    # The server closed the kept-alive connection just as the next request arrived.
    fake.push(close_without_answer, sse(text_stream("second")))
    assert ask(client, stream=True) == "second"
    stale, retried = fake.requests[-2:]
    assert stale.connection <= newest  # a pooled connection
    assert retried.connection > newest  # a new one
    assert "retrying on a new connection" in relay.log()
    assert "_HTTP11ClientFactory" not in relay.log()  # no log line per upstream connection


def test_idle_connections_are_dropped_after_idle_connection_timeout(
        client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    assert ask(client, "brief-model", stream=True)
    first = fake.requests[-1].connection
    time.sleep(0.1)  # the upstream connection is back in the pool
    assert ask(client, "brief-model", stream=True)
    assert fake.requests[-1].connection == first  # reused while fresh
    time.sleep(2)
    assert ask(client, "brief-model", stream=True)
    assert fake.requests[-1].connection != first


def _leave_after(relay: Relay, seconds: float) -> None:
    """Send a non-streaming request and hang up after ``seconds``."""
    s = socket.create_connection(("127.0.0.1", relay.port))
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + DEMO_KEY.encode()
              + b"\r\ncontent-type: application/json\r\ncontent-length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(seconds)
    s.close()


def _wait_for(predicate: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_client_leaving_during_a_non_streaming_body_stops_the_upstream(
        relay: Relay, fake: FakeOpenAI) -> None:
    sent = Sent()
    fake.push(slow_json_body(sent))
    lines = relay.log().count("POST /v1/messages 499")
    _leave_after(relay, 0.5)
    assert _wait_for(lambda: sent.disconnected_at is not None), "upstream kept generating"
    assert not sent.finished
    assert _wait_for(lambda: relay.log().count("POST /v1/messages 499") == lines + 1)
    assert "POST /v1/messages 504" not in relay.log()


def test_client_leaving_before_the_upstream_answers_is_a_cancel_not_a_timeout(
        relay: Relay, fake: FakeOpenAI) -> None:
    fake.push(stall(1.5, json_response({"error": {"message": "late"}}, status=500)))
    lines = relay.log().count("POST /v1/messages 499")
    _leave_after(relay, 0.3)
    assert _wait_for(lambda: relay.log().count("POST /v1/messages 499") == lines + 1)
    assert "no response from the upstream" not in relay.log()
    assert "POST /v1/messages 504" not in relay.log()


def test_a_prompt_over_max_input_tokens_is_refused_before_the_upstream(
        client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    before = len(fake.requests)
    error = failure_of(client, "small-context", text="many words " * 200)
    assert error.status_code == 400
    assert error.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    message = plain(error)
    assert message.startswith("prompt is too long: ") and message.endswith(
        " tokens > 50 maximum"), message
    assert int(message.split()[4]) > 50
    assert len(fake.requests) == before
    assert ask(client, "small-context", stream=True) == "Hello from the fake upstream."


LLAMA_OVERFLOW = {"error": {
    "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 4096,
    "message": "request (9000 tokens) exceeds the available context size (4096 tokens), "
               "try increasing it"}}


@pytest.mark.parametrize("status", [200, 400])
def test_llama_server_overflow_is_a_400_to_compact_on(client: anthropic.Anthropic,
                                                      fake: FakeOpenAI, status: int) -> None:
    # A 200 whose body is a bare JSON error (not an event stream) is mapped like a 400.
    fake.push(json_response(LLAMA_OVERFLOW, status=status))
    error = failure_of(client, "claude-sonnet-4-6", stream=True)
    assert error.status_code == 400
    assert plain(error) == "prompt is too long: 9000 tokens > 4096 maximum"


def test_bare_json_error_under_an_event_stream_content_type(client: anthropic.Anthropic,
                                                            fake: FakeOpenAI) -> None:
    fake.push(json_response(LLAMA_OVERFLOW, content_type="text/event-stream"))
    error = failure_of(client, "claude-sonnet-4-6", stream=True)
    assert error.status_code == 400
    assert plain(error) == "prompt is too long: 9000 tokens > 4096 maximum"


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_200_is_a_clear_upstream_error(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                stream: bool) -> None:
    # llama-cpp-python's answer to an over-long prompt.
    fake.push(json_response(None, raw=b"", content_type="text/event-stream"))
    error = failure_of(client, "claude-sonnet-4-6", stream=stream)
    assert error.status_code == 502
    assert "answered with an empty body" in plain(error)


WAITING_STAGE = '''
import attrs
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import IStageFactory


@attrs.frozen
class WaitOptions:
    seconds: float = 2.0


@attrs.frozen
class WaitStage:
    seconds: float

    async def __call__(self, exchange, proceed):
        reply = await proceed(exchange)
        await deferLater(reactor, self.seconds, lambda: None)  # accounting, a tool run...
        return reply


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class WaitFactory:
    type_name: str = "wait-after-proceed"
    options_type: type = WaitOptions

    def build(self, options, services):
        return WaitStage(options.seconds)


wait = WaitFactory()
'''


def test_a_stage_waiting_after_proceed_pauses_the_upstream(
        tmp_path: pytest.TempPathFactory, fake: FakeOpenAI) -> None:
    from pathlib import Path

    from tests.fakeupstream import endless

    tmp = Path(str(tmp_path))
    plugins = tmp / "site" / "txrelay" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "wait_stage.py").write_text(WAITING_STAGE)
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url}],
        models=[{"id": "claude-sonnet-4-6", "provider": "up"}],
        pipeline=[{"type": "auth"}, {"type": "wait-after-proceed", "options": {"seconds": 2}},
                  {"type": "model-map"}, {"type": "translate"}])
    relay = start_relay(tmp, cfg, env={"PYTHONPATH": str(tmp / "site")})
    try:
        sent = Sent()
        fake.push(endless(sent, limit=1 << 30))
        s = socket.create_connection(("127.0.0.1", relay.port))
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + DEMO_KEY.encode()
                  + b"\r\ncontent-type: application/json\r\ncontent-length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(1.5)  # the stage still waits: only socket buffers may fill
        held = sent.bytes
        assert held < 16 * 1024 * 1024, f"upstream sent {held} bytes while no sink was attached"
        s.settimeout(5)
        received = 0
        while received < 4 * held + (1 << 20):  # then the stream flows again
            chunk = s.recv(1 << 16)
            assert chunk
            received += len(chunk)
        assert sent.bytes > held
        s.close()
    finally:
        relay.stop()
