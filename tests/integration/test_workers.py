"""
``server.workers = 2`` (issue 11.3): two relay processes share the port; the main process
restarts a dead one, forwards SIGHUP (each reloads) and on SIGTERM drains both, letting a
live stream finish, then exits.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_reuse_port_swap import free_port
from tests.relayproc import DEMO_KEY, config_text, start_relay

pytestmark = pytest.mark.integration

SLOW_DEMO = [{"name": "demo", "kind": "demo", "options": {"event_delay": 0.1}}]
BODY = json.dumps({"model": "sonnet", "max_tokens": 200, "stream": True,
                   "messages": [{"role": "user", "content": "a short streamed answer"}]})


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stream(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/v1/messages", body=BODY,
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "txrelay-serve"])
def test_two_workers_are_supervised_restarted_reloaded_and_drained(
    tmp: Path, serve: bool,
) -> None:
    port = free_port()
    cfg = config_text(server={"listen": [f"tcp:{port}:interface=127.0.0.1"],
                              "reuse_port": True, "workers": 2, "drain_timeout": 20},
                      providers=SLOW_DEMO)
    relay = start_relay(tmp, cfg, serve=serve)
    try:
        wait_until(lambda: relay.log().count("txrelay listening on") == 2)
        first = children(relay.process.pid)
        assert len(first) == 2
        assert b"event: message_stop" in stream(port)

        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: relay.log().count("txrelay listening on") == 3)
        second = children(relay.process.pid)
        assert len(second) == 2 and first[0] not in second and first[1] in second
        assert "worker 0 ended" in relay.log() or "worker 1 ended" in relay.log()

        relay.process.send_signal(signal.SIGHUP)
        wait_until(lambda: relay.log().count("reloaded ") == 2)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("POST", "/v1/messages", body=BODY,
                     headers={"x-api-key": DEMO_KEY, "content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        relay.process.send_signal(signal.SIGTERM)
        body = resp.read()  # the live stream finishes through the drain
        assert b"event: message_stop" in body
        assert relay.process.wait(30) == (0 if serve else -signal.SIGTERM)
        for pid in second:
            assert not Path(f"/proc/{pid}").exists() or \
                "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert "Traceback" not in relay.log()
    finally:
        relay.stop()
