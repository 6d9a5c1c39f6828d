"""
Issue 12 items 1 to 3 end to end: the real relay in front of faulty fake Chat Completions
servers, with the official anthropic SDK (``max_retries=0``, so every attempt seen upstream
is the relay's own). Fallbacks on connection refused, 429 with ``retry-after``, 500 and a
first-byte timeout; no retry once a stream reached the client; circuit breakers in
``/health/ready`` and ``/metrics``; key pools; cache affinity in the cached-token counts.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import (
    FakeOpenAI,
    PromptCache,
    chunk,
    rate_limited,
    sse,
    stall,
    text_stream,
)
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

KEYS = {"UP_A": "sk-a-secret", "UP_B": "sk-b-secret", "POOL0": "sk-pool-zero",
        "POOL1": "sk-pool-one"}


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def provider(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "openai-chat", "base_url": url,
            "options": {"dialect": "openai"}, **extra}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    a, b = FakeOpenAI().start(), FakeOpenAI().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def relay(fakes: tuple[FakeOpenAI, FakeOpenAI],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    a, b = fakes
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    cfg = config_text(
        providers=[
            provider("a", a.url, api_key={"env": "UP_A"}),
            # the same upstream, with a short wait for its response headers
            provider("a-quick", a.url, api_key={"env": "UP_A"},
                     timeouts={"first_byte": 1.5}),
            provider("b", b.url, api_key={"env": "UP_B"}),
            provider("dead", dead),
            provider("pool", a.url, api_keys=[{"env": "POOL0", "name": "zero"},
                                              {"env": "POOL1", "name": "one"}]),
        ],
        models=[
            # a first, b when a fails
            {"id": "fallback", "targets": [
                {"provider": "a", "upstream_model": "model-a"},
                {"provider": "b", "upstream_model": "model-b", "priority": 1}],
             "routing": {"attempts": 2, "breaker": False, "affinity": False}},
            {"id": "fallback-quick", "targets": [
                {"provider": "a-quick", "upstream_model": "model-a"},
                {"provider": "b", "upstream_model": "model-b", "priority": 1}],
             "routing": {"attempts": 2, "breaker": False, "affinity": False}},
            # a target that refuses connections, with a breaker that opens after 2
            {"id": "flaky", "targets": [
                {"provider": "dead", "upstream_model": "gone", "name": "dead-target"},
                {"provider": "b", "upstream_model": "model-b", "priority": 1,
                 "name": "b-backup"}],
             "routing": {"breaker_failures": 2, "breaker_window": 600,
                         "breaker_cooldown": 600, "affinity": False}},
            # a breaker with a short cool-down, to see it probed back in
            {"id": "recovering", "targets": [
                {"provider": "a", "upstream_model": "model-r", "name": "comeback"},
                {"provider": "b", "upstream_model": "model-b", "priority": 1}],
             "routing": {"breaker_failures": 2, "breaker_cooldown": 1, "affinity": False}},
            {"id": "pooled", "provider": "pool", "upstream_model": "model-pool"},
            # two equal targets, with and without affinity
            {"id": "sticky", "targets": [
                {"provider": "a", "upstream_model": "cache-a"},
                {"provider": "b", "upstream_model": "cache-b"}]},
            {"id": "loose", "targets": [
                {"provider": "a", "upstream_model": "cache-a"},
                {"provider": "b", "upstream_model": "cache-b"}],
             "routing": {"affinity": False}},
        ],
    )
    r = start_relay(tmp_path_factory.mktemp("routing"), cfg, env=KEYS)
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[None]:
    for f in fakes:
        f.script.clear()
        f.requests.clear()
        f.default = None
    yield
    for f in fakes:
        f.script.clear()
        f.default = None


def ask(client: anthropic.Anthropic, model: str, text: str = "hi") -> str:
    with client.messages.stream(model=model, max_tokens=50,
                                messages=[{"role": "user", "content": text}]) as s:
        message = s.get_final_message()
    return "".join(b.text for b in message.content if b.type == "text")


def access_lines(relay: Relay, model: str) -> list[str]:
    return [line for line in relay.log().splitlines()
            if "POST /v1/messages" in line and f"model={model} " in line]


def access_line(relay: Relay, model: str, before: int) -> str:
    """The access line of the request after the ``before`` earlier ones of ``model`` (the
    relay writes it when the response is over, which may be just after the client read it)."""
    deadline = time.monotonic() + 30
    while len(lines := access_lines(relay, model)) <= before:
        assert time.monotonic() < deadline, relay.log()[-3000:]
        time.sleep(0.02)
    return lines[before]


def wait_log(relay: Relay, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in relay.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{relay.log()[-3000:]}"
        time.sleep(0.02)


def get(relay: Relay, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(relay.url + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_connection_refused_falls_back(relay: Relay, client: anthropic.Anthropic,
                                       fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    before = len(access_lines(relay, "flaky"))
    assert ask(client, "flaky") == "Hello from the fake upstream."
    _, b = fakes
    assert [r.body["model"] for r in b.requests] == ["model-b"]
    line = access_line(relay, "flaky", before)
    assert "target=b-backup attempts=2" in line and "provider=b " in line


@pytest.mark.parametrize(("failure", "model"), [
    pytest.param(rate_limited("1"), "fallback", id="429-retry-after"),
    pytest.param(rate_limited(None, status=500), "fallback", id="500"),
    pytest.param(rate_limited(None, status=503), "fallback", id="503"),
    pytest.param(stall(5.0, sse(text_stream("too late"))), "fallback-quick",
                 id="first-byte-timeout"),
])
def test_a_failure_before_the_first_byte_moves_to_the_next_target(
        relay: Relay, client: anthropic.Anthropic, fakes: tuple[FakeOpenAI, FakeOpenAI],
        failure: Any, model: str) -> None:
    a, b = fakes
    a.push(failure)
    before = len(access_lines(relay, model))
    assert ask(client, model) == "Hello from the fake upstream."
    assert [r.body["model"] for r in a.requests] == ["model-a"]
    assert [r.body["model"] for r in b.requests] == ["model-b"]
    # each target gets its own upstream model and its own provider's key
    assert a.requests[0].headers["authorization"] == "Bearer sk-a-secret"
    assert b.requests[0].headers["authorization"] == "Bearer sk-b-secret"
    line = access_line(relay, model, before)
    assert "target=b/model-b attempts=2" in line
    assert "sk-a-secret" not in relay.log()


def test_a_stream_that_fails_after_its_first_event_is_not_retried(
        relay: Relay, client: anthropic.Anthropic,
        fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    a.push(sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "half an "})],
               done=False))
    seen: list[str] = []
    before = len(access_lines(relay, "fallback"))
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
            model="fallback", max_tokens=50,
            messages=[{"role": "user", "content": "hi"}]) as s:
        for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                seen.append(event.delta.text)
    assert seen == ["half an "]  # the client had the first bytes: nothing may follow
    assert len(a.requests) == 1 and b.requests == []
    assert "target=a/model-a attempts=1" in access_line(relay, "fallback", before)


def test_when_every_target_fails_the_last_error_answers(
        client: anthropic.Anthropic, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    a.push(rate_limited(None, status=500))
    b.push(rate_limited(None, status=503))
    with pytest.raises(anthropic.APIStatusError) as info:
        ask(client, "fallback")
    assert info.value.status_code >= 500
    assert len(a.requests) == 1 and len(b.requests) == 1  # attempts = 2


def test_the_breaker_opens_shows_in_readiness_and_metrics(
        relay: Relay, client: anthropic.Anthropic,
        fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    for _ in range(3):
        before = len(access_lines(relay, "flaky"))
        ask(client, "flaky")
    line = access_line(relay, "flaky", before)
    status, body = get(relay, "/health/ready")
    assert status == 200  # one open breaker narrows the route; the relay still serves
    targets = json.loads(body)["detail"]["routing"]["targets"]
    assert targets["dead-target"]["state"] == "open"
    assert targets["b-backup"]["state"] == "closed"
    # with the breaker open the dead target is not even tried
    assert "target=b-backup attempts=1" in line
    status, metrics = get(relay, "/metrics")
    text = metrics.decode()
    assert 'txrelay_route_breaker_state{state="open",target="dead-target"} 1.0' in text
    assert ('txrelay_route_attempts_total{key="-",model="flaky",outcome="breaker_open",'
            'target="dead-target"}') in text
    assert ('txrelay_route_attempts_total{key="-",model="flaky",outcome="served",'
            'target="b-backup"}') in text


def test_a_rate_limited_key_cools_while_the_other_serves(
        relay: Relay, client: anthropic.Anthropic,
        fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, _ = fakes
    a.push(rate_limited("120"))
    assert ask(client, "pooled") == "Hello from the fake upstream."
    first, second = (r.headers["authorization"] for r in a.requests)
    assert first != second
    for _ in range(4):
        ask(client, "pooled")
    assert {r.headers["authorization"] for r in a.requests[2:]} == {second}
    keys = json.loads(get(relay, "/health/ready")[1])["detail"]["routing"]["keys"]["pool"]
    cooling = [name for name, e in keys.items() if "cooling_until" in e]
    assert len(cooling) == 1
    # the other key is rate-limited too: the client gets Anthropic's 429 with the wait of
    # the key that comes back first (the first one, 120 s, not the new 300 s)
    a.push(rate_limited("300"))
    with pytest.raises(anthropic.RateLimitError) as info:
        ask(client, "pooled")
    assert info.value.status_code == 429
    retry_after = int(info.value.response.headers["retry-after"])
    assert 0 < retry_after <= 120
    # each key cooled for the retry-after its 429 gave (key names only in the log)
    wait_log(relay, f"upstream key {cooling[0]} of pool rate-limited: cooling for 120s")
    other = ({"zero", "one"} - set(cooling)).pop()
    wait_log(relay, f"upstream key {other} of pool rate-limited: cooling for 300s")
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    text = get(relay, "/metrics")[1].decode()
    assert 'txrelay_upstream_key_cooling{key="one",provider="pool"} 1.0' in text
    assert 'txrelay_upstream_key_cooling{key="zero",provider="pool"} 1.0' in text
    assert "sk-pool" not in relay.log() and "sk-pool" not in text


def conversation(client: anthropic.Anthropic, model: str, turns: int) -> list[int]:
    """The cached input tokens of each turn of one conversation."""
    messages: list[Any] = []
    cached: list[int] = []
    for n in range(turns):
        messages.append({"role": "user", "content": f"question {n}"})
        with client.messages.stream(model=model, max_tokens=50, system="You are terse.",
                                    messages=messages) as s:
            message = s.get_final_message()
        cached.append(message.usage.cache_read_input_tokens or 0)
        messages.append({"role": "assistant", "content": message.content[0].text})  # type: ignore[union-attr]
    return cached


def test_cache_affinity_keeps_the_prompt_cache_hitting(
        client: anthropic.Anthropic, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    cache = PromptCache()
    a.default = b.default = cache.responder()
    turns = 16
    sticky = conversation(client, "sticky", turns)
    # Every turn after the first finds the whole previous prompt cached: turn n sends the
    # system message and 2n + 1 others upstream, of which the 2n of the turn before are a
    # cached prefix (100 tokens a message).
    assert sticky == [2 * n * 100 for n in range(turns)]
    used = {(key, model) for key, model, _ in cache.log}
    assert len(used) == 1  # one target, one key
    cache = PromptCache()  # cold caches again
    a.default = b.default = cache.responder()
    loose = conversation(client, "loose", turns)
    # Without affinity the equal weights spread the turns over both targets, and a turn on
    # the other target than the turn before finds a shorter prefix (or none) cached.
    assert len({(key, model) for key, model, _ in cache.log}) == 2
    assert sum(loose) < sum(sticky)
    assert any(got < 2 * n * 100 for n, got in enumerate(loose) if n)


def test_an_open_breaker_is_probed_back_in(
        relay: Relay, client: anthropic.Anthropic,
        fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, _ = fakes
    a.push(rate_limited(None, status=500), rate_limited(None, status=502))
    ask(client, "recovering")
    ask(client, "recovering")
    detail = json.loads(get(relay, "/health/ready")[1])["detail"]["routing"]
    assert detail["targets"]["comeback"]["state"] == "open"
    # after the cool-down one request probes the target; a healthy answer closes it
    deadline = time.monotonic() + 60
    while True:
        before = len(access_lines(relay, "recovering"))
        ask(client, "recovering")
        if "target=comeback " in access_line(relay, "recovering", before):
            break
        assert time.monotonic() < deadline, "the breaker was never probed"
        time.sleep(0.2)
    detail = json.loads(get(relay, "/health/ready")[1])["detail"]["routing"]
    assert detail["targets"]["comeback"] == {"state": "closed"}
    assert [r.body["model"] for r in a.requests] == ["model-r"] * 3
