"""
The ``limits`` stage end to end: the real relay in front of the fake Chat Completions server,
driven by the anthropic SDK (``max_retries=0`` to see each 429; default retries to see that
the SDK waits for ``retry-after`` and that ``x-should-retry: false`` stops it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import (
    FakeOpenAI,
    Handler,
    Recorded,
    Responder,
    json_response,
    sse,
    text_stream,
)
from tests.relayproc import Relay, config_text, start_relay
from txrelay.config import hash_key

pytestmark = pytest.mark.integration

#: Key name → its secret; each test uses keys of its own, so they share one relay.
KEYS = {name: f"limits-test-{name}" for name in (
    "rpm", "retry", "tokens", "huge", "streams", "gone", "spend", "models", "team-a", "team-b")}
MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "hello"}]

LIMITS: dict[str, Any] = {
    "keys": [
        {"name": "rpm", "requests_per_minute": 2},
        {"name": "retry", "concurrent_streams": 1},
        {"name": "tokens", "output_tokens_per_minute": 10},
        {"name": "huge", "input_tokens_per_minute": 500},
        {"name": "streams", "concurrent_streams": 1},
        {"name": "gone", "concurrent_streams": 1},
        {"name": "spend", "spend_per_month": 0.0005},
        {"name": "models", "models": ["claude-haiku-*"]},
    ],
    "groups": [{"name": "team", "keys": ["team-a", "team-b"], "requests_per_minute": 3}],
    # The fake's usage: 100 prompt tokens (60 of them cached) and 7 completion tokens:
    # 40 * 3 + 60 * 0.3 + 7 * 15 = 243 µ$ a request.
    "prices": [{"model": "claude-*", "input": 3, "output": 15}],
}


USAGE = {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
         "prompt_tokens_details": {"cached_tokens": 60}}


def answer(h: Handler, r: Recorded) -> None:
    """A short answer, streamed or not as asked, with :data:`USAGE`."""
    if isinstance(r.body, dict) and r.body.get("stream"):
        sse(text_stream("Hello from the fake upstream.", usage=USAGE))(h, r)
        return
    json_response({"id": "c", "object": "chat.completion", "choices": [{
        "index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "Hello from the fake upstream."}}],
        "usage": USAGE})(h, r)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI(default=answer)
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def relay(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    cfg = config_text(
        providers=[{"name": "up", "kind": "openai-chat", "base_url": fake.url,
                    "timeouts": {"connect": 2, "first_byte": 30, "idle": 30}}],
        models=[{"id": MODEL, "provider": "up", "upstream_model": "fake-model",
                 "patterns": ["claude-*"]}],
        pipeline=[{"type": "auth"}, {"type": "limits", "options": LIMITS},
                  {"type": "model-map"}, {"type": "translate"}],
        keys=[{"name": n, "sha256": hash_key(k)} for n, k in KEYS.items()],
    )
    r = start_relay(tmp_path_factory.mktemp("limits"), cfg)
    yield r
    r.stop()


def sdk(relay: Relay, key: str, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, api_key=KEYS[key], max_retries=retries)


def gated(gate: threading.Event) -> Responder:
    """A stream that sends its first text, then waits for ``gate`` before the rest."""
    chunks = text_stream("a slow answer", usage=USAGE)

    def respond(h: Handler, r: Recorded) -> None:
        h.start(200, "text/event-stream")
        for c in chunks[:2]:
            h.write_chunk(f"data: {json.dumps(c)}\n\n".encode(), None)
        gate.wait(60)
        for c in [*chunks[2:], "data: [DONE]"]:
            data = c if isinstance(c, str) else f"data: {json.dumps(c)}"
            if not h.write_chunk(f"{data}\n\n".encode(), None):
                return
        h.end_chunks()
    return respond


def wait_for_log(relay: Relay, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while relay.log().count(text) < count:
        assert time.monotonic() < deadline, relay.log()[-3000:]
        time.sleep(0.05)


def test_requests_per_minute_429_and_headers(relay: Relay) -> None:
    with sdk(relay, "rpm") as client:
        raws = [client.messages.with_raw_response.create(model=MODEL, max_tokens=50,
                                                         messages=HELLO) for _ in range(2)]
        assert [r.headers["anthropic-ratelimit-requests-remaining"] for r in raws] == ["1", "0"]
        assert raws[0].headers["anthropic-ratelimit-requests-limit"] == "2"
        assert raws[0].headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert raws[0].parse().content[0].type == "text"
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    e = caught.value
    assert e.status_code == 429
    assert e.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "key 'rpm' is over its limit of 2 requests per minute" in e.message
    assert int(e.response.headers["retry-after"]) >= 1
    assert e.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_group_limit_across_keys(relay: Relay) -> None:
    with sdk(relay, "team-a") as a, sdk(relay, "team-b") as b:
        for client in (a, b, a):
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
        with pytest.raises(anthropic.RateLimitError, match="group 'team' \\(of key 'team-b'\\)"):
            b.messages.create(model=MODEL, max_tokens=50, messages=HELLO)


def test_output_tokens_per_minute(relay: Relay) -> None:
    with sdk(relay, "tokens") as client:
        first = client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
        assert first.usage.output_tokens == 7
        # Admitted while the window has room (3 left); streamed, its 7 are counted too.
        with client.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as s:
            assert s.response.headers["anthropic-ratelimit-output-tokens-remaining"] == "3"
            assert s.response.headers["anthropic-ratelimit-tokens-limit"] == "10"
            assert s.get_final_message().usage.output_tokens == 7
        with pytest.raises(anthropic.RateLimitError, match="10 output tokens per minute"):
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)


def test_request_larger_than_the_limit_is_not_retried(relay: Relay, fake: FakeOpenAI) -> None:
    before = len(fake.requests)
    with sdk(relay, "huge", retries=3) as client, pytest.raises(
            anthropic.RateLimitError, match="can never be served") as caught:
        client.messages.create(model=MODEL, max_tokens=50,
                               messages=[{"role": "user", "content": "word " * 2000}])
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == before
    assert relay.log().count("limits-test-huge") == 0  # the key never reaches a log


def test_concurrent_streams_with_a_slow_stream(relay: Relay, fake: FakeOpenAI) -> None:
    gate = threading.Event()
    fake.push(gated(gate))
    with sdk(relay, "streams") as client:
        with client.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as slow:
            events = iter(slow)
            assert next(events).type == "message_start"
            with pytest.raises(anthropic.RateLimitError) as caught, \
                    client.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as s:
                s.get_final_message()
            assert "already has 1 concurrent streams in flight" in caught.value.message
            assert caught.value.response.headers["retry-after"] == "1"
            # A non-streaming request does not take a stream slot.
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
            gate.set()
            assert slow.get_final_message().content[0].type == "text"
        with client.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as s:
            assert s.get_final_message().stop_reason == "end_turn"


def test_sdk_waits_for_retry_after(relay: Relay, fake: FakeOpenAI) -> None:
    gate = threading.Event()
    fake.push(gated(gate))
    with sdk(relay, "retry") as holder, sdk(relay, "retry", retries=5) as patient:
        with holder.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as slow:
            next(iter(slow))
            result: list[Any] = []

            def second() -> None:
                started = time.monotonic()
                with patient.messages.stream(model=MODEL, max_tokens=50,
                                             messages=HELLO) as s:
                    result.append((s.get_final_message(), time.monotonic() - started))

            worker = threading.Thread(target=second)
            refusals = relay.log().count(' 429 ')
            worker.start()
            wait_for_log(relay, ' 429 ', refusals + 1)  # the SDK was refused once...
            gate.set()
            slow.get_final_message()
        worker.join(60)
    message, waited = result[0]
    assert message.stop_reason == "end_turn"  # ...and then served
    assert waited >= 1.0  # it waited the retry-after second (its own backoff is shorter)


def test_client_gone_releases_its_stream_slot(relay: Relay, fake: FakeOpenAI) -> None:
    gate = threading.Event()
    fake.push(gated(gate))
    with sdk(relay, "gone") as client:
        with client.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as s:
            next(iter(s))
        # Leaving the block closed the connection mid-stream; the slot comes back.
        deadline = time.monotonic() + 30
        while True:
            try:
                with client.messages.stream(model=MODEL, max_tokens=50,
                                            messages=HELLO) as again:
                    assert again.get_final_message().stop_reason == "end_turn"
                break
            except anthropic.RateLimitError:
                assert time.monotonic() < deadline, "the slot was never released"
                time.sleep(0.1)
    gate.set()


def test_spend_budget_with_prices(relay: Relay) -> None:
    with sdk(relay, "spend") as client:
        for _ in range(3):  # 243, 486, 729 µ$: the third starts under the $0.0005 budget
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    e = caught.value
    assert "key 'spend' has used its monthly spend budget of $0.0005; it resets at " in e.message
    assert e.response.headers["x-should-retry"] == "false"


def test_allowed_models(relay: Relay) -> None:
    with sdk(relay, "models") as client:
        client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HELLO)
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
        assert caught.value.status_code == 403
        assert (f"key 'models' may not use model '{MODEL}' (allowed: claude-haiku-*)"
                in caught.value.message)
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.count_tokens(model=MODEL, messages=HELLO)
