"""
Managed client keys across a fleet (issue 12.7): two real relays on one real Redis;
``txrelay keys add`` → both admit the key, ``disable`` → both refuse it (401) within the
refresh period, ``rotate`` → only the new key works; the file's keys work throughout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.integration.test_state_redis import state_table
from tests.redisproc import RedisServer, free_port
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

REFRESH = 0.5


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, list[Relay]]]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    config = config_text(pipeline=[{"type": "auth", "options": {"refresh": REFRESH}},
                                   {"type": "model-map"}, {"type": "translate"}])
    config += state_table(server, prefix="fleet:")
    relays: list[Relay] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            relays.append(start_relay(tmp_path / name, config))
        yield tmp_path / "a" / "relay.toml", relays
    finally:
        for r in relays:
            r.stop()
        server.stop()


def keys(config: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "txrelay", "keys", "--config", str(config),
                          *args], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def status(relay: Relay, key: str) -> int:
    with anthropic.Anthropic(base_url=relay.url, api_key=key, max_retries=0) as c:
        try:
            c.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                              messages=[{"role": "user", "content": "hi"}])
        except anthropic.APIStatusError as e:
            return e.status_code
    return 200


def until_status(relay: Relay, key: str, expected: int) -> None:
    """Poll until ``relay`` answers ``key`` with ``expected``; the refresh bounds it."""
    for _ in range(200):
        if status(relay, key) == expected:
            return
        time.sleep(REFRESH / 5)
    raise AssertionError(f"{relay.url} never answered {expected}\n{relay.log()[-2000:]}")


def test_keys_managed_in_redis_hold_on_every_relay(fleet: tuple[Path, list[Relay]]) -> None:
    config, relays = fleet
    out = keys(config, "add", "ci-bot", "--group", "team-a", "--models", "claude-*")
    key = out.splitlines()[0]
    assert key.startswith("txr-")
    for r in relays:  # within a refresh (at once when the copy is over 1 s old)
        until_status(r, key, 200)
        assert status(r, DEMO_KEY) == 200
    keys(config, "disable", "ci-bot")
    for r in relays:
        until_status(r, key, 401)
        assert status(r, DEMO_KEY) == 200
    assert "disabled" in keys(config, "list")
    out = subprocess.run([sys.executable, "-m", "txrelay", "keys", "-c", str(config),
                          "enable", "nobody"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 1 and "no managed key named 'nobody'" in out.stderr
    keys(config, "enable", "ci-bot")
    for r in relays:
        until_status(r, key, 200)
    new = keys(config, "rotate", "ci-bot").splitlines()[0]
    assert new != key
    for r in relays:
        until_status(r, key, 401)
        assert status(r, new) == 200
        assert status(r, DEMO_KEY) == 200
        assert key not in r.log() and new not in r.log()  # keys never reach a log
