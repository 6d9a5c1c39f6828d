# -*- test-case-name: tests.integration.test_routing_redis -*-
"""
Issue 12.1 and 12.3 across a fleet: two relay processes sharing one real Redis
(``[state] kind = "redis"``) share their circuit breakers and their cache affinity, so a
target one relay found broken is not tried by the other, and a conversation that moves
between relays stays on the target (and prompt cache) it started on.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakeupstream import FakeOpenAI, PromptCache
from tests.integration.test_routing import access_line, access_lines, ask, closed_port, provider
from tests.integration.test_state_redis import state_table
from tests.redisproc import RedisServer, free_port
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[Relay], FakeOpenAI, FakeOpenAI]]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    a, b = FakeOpenAI().start(), FakeOpenAI().start()
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    cfg = config_text(
        providers=[provider("a", a.url), provider("b", b.url), provider("dead", dead)],
        models=[
            {"id": "flaky", "targets": [
                {"provider": "dead", "upstream_model": "gone", "name": "dead-target"},
                {"provider": "b", "upstream_model": "model-b", "priority": 1,
                 "name": "b-backup"}],
             "routing": {"breaker_failures": 2, "breaker_window": 600,
                         "breaker_cooldown": 600, "affinity": False}},
            {"id": "sticky", "targets": [
                {"provider": "a", "upstream_model": "cache-a"},
                {"provider": "b", "upstream_model": "cache-b"}]},
        ],
    ) + state_table(server, prefix="fleet-routing:")
    relays: list[Relay] = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            relays.append(start_relay(tmp_path / name, cfg))
        yield relays, a, b
    finally:
        for r in relays:
            r.stop()
        a.stop()
        b.stop()
        server.stop()


def client(relay: Relay) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0)


def test_a_breaker_one_relay_opened_holds_on_the_other(
        fleet: tuple[list[Relay], FakeOpenAI, FakeOpenAI]) -> None:
    (one, two), _, b = fleet
    with client(one) as c:
        for _ in range(2):  # two refused connections open the dead target's breaker
            before = len(access_lines(one, "flaky"))
            assert ask(c, "flaky") == "Hello from the fake upstream."
            assert "target=b-backup attempts=2" in access_line(one, "flaky", before)
    # The other relay never saw the dead target fail, yet skips it: the breaker is shared.
    with client(two) as c:
        before = len(access_lines(two, "flaky"))
        assert ask(c, "flaky") == "Hello from the fake upstream."
        assert "target=b-backup attempts=1" in access_line(two, "flaky", before)
    with urllib.request.urlopen(two.url + "/health/ready", timeout=10) as r:
        targets = json.load(r)["detail"]["routing"]["targets"]
    assert targets["dead-target"]["state"] == "open"
    assert len(b.requests) == 3


def test_a_conversation_keeps_its_target_from_relay_to_relay(
        fleet: tuple[list[Relay], FakeOpenAI, FakeOpenAI]) -> None:
    relays, a, b = fleet
    cache = PromptCache()
    a.default = b.default = cache.responder()
    messages: list[Any] = []
    cached: list[int] = []
    clients = [client(r) for r in relays]
    try:
        for n in range(10):  # the turns alternate between the two relays
            messages.append({"role": "user", "content": f"question {n}"})
            with clients[n % 2].messages.stream(
                    model="sticky", max_tokens=50, system="You are terse.",
                    messages=messages,
                    extra_headers={"x-claude-code-session-id": "fleet-session"}) as s:
                message = s.get_final_message()
            cached.append(message.usage.cache_read_input_tokens or 0)
            messages.append({"role": "assistant",
                             "content": message.content[0].text})  # type: ignore[union-attr]
    finally:
        for c in clients:
            c.close()
    # One target, one upstream key for the whole conversation, on both relays: every turn
    # finds the previous turn's whole prompt cached.
    assert len({(key, model) for key, model, _ in cache.log}) == 1
    assert cached == [2 * n * 100 for n in range(10)]
