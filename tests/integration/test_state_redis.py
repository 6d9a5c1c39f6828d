"""
The relay on a real Redis (issue 12.5): readiness, metrics and logs follow Redis going away
and coming back, with ``on_unavailable`` open (keeps serving) and closed (readiness 503).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.redisproc import RedisServer, free_port
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration


def state_table(server: RedisServer, **extra: Any) -> str:
    """A ``[state]`` table on ``server`` (appended after the rest of a test config)."""
    from tests.relayproc import toml_value

    values = {"kind": "redis", "url": server.url, "probe_interval": 0.2, **extra}
    return "\n[state]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def until(condition: Callable[[], Any], what: str, relay: Relay) -> Any:
    """Poll ``condition`` (the relay probes every 0.2 s) for at most 30 s."""
    for _ in range(300):
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never: {what}\n{relay.log()[-3000:]}")


def ready(relay: Relay) -> tuple[int, dict[str, Any]]:
    status, body = get(relay.port, "/health/ready")
    return status, json.loads(body)


def ask(relay: Relay) -> str:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        message = c.messages.create(model="claude-sonnet-4-6", max_tokens=32,
                                    messages=[{"role": "user", "content": "hello"}])
    return message.content[0].text  # type: ignore[union-attr]


def test_open_keeps_serving_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    relay = start_relay(tmp_path, config_text(server={"metrics": True}) + state_table(server))
    try:
        status, body = until(lambda: (r := ready(relay))[1]["detail"].get("state", {})
                             .get("serving_from") == "redis" and r, "state up", relay)
        assert status == 200 and body["detail"]["state"]["up"] is True
        assert ask(relay)
        server.stop()
        status, body = until(lambda: (r := ready(relay))[1]["detail"]["state"]["up"] is False
                             and r, "the relay notices Redis is down", relay)
        assert status == 200  # open: still ready, saying why in the detail
        assert body["detail"]["state"]["serving_from"] == "memory"
        assert ask(relay)  # still serving
        metrics = get(relay.port, "/metrics")[1]
        assert 'txrelay_state_store_up{store="redis"} 0.0' in metrics
        server.start()
        until(lambda: ready(relay)[1]["detail"]["state"]["up"] is True, "Redis back", relay)
        assert 'txrelay_state_store_up{store="redis"} 1.0' in get(relay.port, "/metrics")[1]
        assert ask(relay)
        log = relay.log()
        assert log.count("is unavailable") == 1, log  # once each way
        assert log.count("answers again: shared state in use") == 1, log
    finally:
        relay.stop()
        server.stop()


def test_closed_turns_readiness_503_while_redis_is_down(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    relay = start_relay(tmp_path, config_text() + state_table(server, on_unavailable="closed"))
    try:
        until(lambda: ready(relay)[1]["detail"].get("state", {}).get("up") is True,
              "state up", relay)
        assert ready(relay)[0] == 200
        server.stop()
        _, body = until(lambda: (r := ready(relay))[0] == 503 and r,
                             "readiness 503 while Redis is down", relay)
        assert body["detail"]["state"]["serving_from"] == "none"
        server.start()
        until(lambda: ready(relay)[0] == 200, "readiness back", relay)
    finally:
        relay.stop()
        server.stop()


def test_check_config_names_bad_state_keys(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "relay.toml"
    path.write_text(config_text() + '\n[state]\nkind = "redis"\nurl = "redis://:pw@h/0"\n'
                    'timeout = 0\non_unavailable = "maybe"\n')
    out = subprocess.run([sys.executable, "-m", "txrelay", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "state.on_unavailable" in out.stderr, out.stderr
    path.write_text(config_text() + '\n[state]\nkind = "redis"\nurl = "redis://:pw@h/0"\n'
                    'timeout = 0\n[state.password]\nenv = "NOPE_UNSET"\n')
    out = subprocess.run([sys.executable, "-m", "txrelay", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    for fragment in ("state.url: holds a password", "state.timeout: must be between",
                     "state.password.env: environment variable NOPE_UNSET is not set"):
        assert fragment in out.stderr, out.stderr


def test_rediss_with_a_private_ca(tmp_path: Path) -> None:
    """``[state.tls]``: the relay trusts a private CA for rediss://, and without it the
    readiness detail says why the server's certificate was refused."""
    from tests.tlsfixtures import issue, make_ca

    ca = make_ca(tmp_path)
    cert = issue(tmp_path, "redis", ca, dns=("localhost",), ips=("127.0.0.1",))
    server = RedisServer(free_port(), tmp_path / "redis", tls=(cert.cert, cert.key))
    (tmp_path / "redis").mkdir()
    server.start()
    relays: list[Relay] = []
    try:
        trusted = tmp_path / "trusted"
        trusted.mkdir()
        relays.append(relay := start_relay(
            trusted, config_text() + state_table(server)
            + f"\n[state.tls]\nca_file = {json.dumps(str(ca.cert))}\n"))
        until(lambda: ready(relay)[1]["detail"].get("state", {}).get("serving_from")
              == "redis", "state up over TLS", relay)
        assert ask(relay)
        untrusted = tmp_path / "untrusted"
        untrusted.mkdir()
        relays.append(other := start_relay(untrusted, config_text() + state_table(server)))
        detail = until(lambda: "TLS:" in (d := ready(other)[1]["detail"].get("state", {}))
                       .get("error", "") and d, "the refusal in the readiness detail", other)
        assert detail["up"] is False and detail["serving_from"] == "memory"
        assert detail["error"].endswith(
            "TLS: the certificate of 127.0.0.1 is signed by an unknown certificate authority")
        assert ask(other)  # open: it serves under in-process state
    finally:
        for r in relays:
            r.stop()
        server.stop()
