"""
``/metrics`` is not for everyone (issue 8.7), with the real relay: loopback peers by
default, an admin key from anywhere, or a listener of its own.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay
from txrelay.config import hash_key

pytestmark = pytest.mark.integration

ADMIN_KEY = "txrelay-admin-key-for-tests"
_METRICS_ON = re.compile(r"serving /metrics on [\d.]+:(\d+)")


def get(host: str, port: int, path: str = "/metrics",
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        host = str(s.getsockname()[0])
    return None if host.startswith("127.") else host


def _start(tmp: Any, **server: Any) -> Relay:
    server = {"admin_keys": [{"name": "ops", "sha256": hash_key(ADMIN_KEY)}], **server}
    return start_relay(tmp, config_text(server=server))


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = _start(tmp_path_factory.mktemp("metrics"), listen=["tcp:0:interface=0.0.0.0"])
    yield r
    r.stop()


def test_loopback_peers_read_metrics_without_a_key(relay: Relay) -> None:
    status, body = get("127.0.0.1", relay.port)
    assert status == 200 and "txrelay_requests_total" in body


def test_other_peers_need_an_admin_key(relay: Relay) -> None:
    host = non_loopback_address()
    if host is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    status, body = get(host, relay.port)
    assert status == 403
    error = json.loads(body)["error"]
    assert error["type"] == "permission_error" and "admin key" in error["message"]
    assert "tester" not in body
    status, body = get(host, relay.port, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200 and "txrelay_requests_total" in body
    # A client key is not an admin key.
    status, body = get(host, relay.port, headers={"x-api-key": DEMO_KEY})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


def test_a_metrics_listener_of_its_own(tmp_path: Any) -> None:
    relay = _start(tmp_path, metrics_listen=["tcp:0:interface=127.0.0.1"])
    try:
        m = _METRICS_ON.search(relay.log())
        assert m is not None, relay.log()
        port = int(m.group(1))
        # The API listener has a request to count, then serves /metrics to admins only.
        status, _ = get("127.0.0.1", relay.port, "/v1/models", {"x-api-key": DEMO_KEY})
        assert status == 200
        status, body = get("127.0.0.1", relay.port)
        assert status == 403 and "metrics_listen" in body
        status, body = get("127.0.0.1", relay.port, headers={"x-api-key": ADMIN_KEY})
        assert status == 200 and "txrelay_requests_total" in body
        # The metrics listener serves it to whoever connects, and nothing else.
        status, body = get("127.0.0.1", port)
        assert status == 200 and 'operation="models.list"' in body
        status, body = get("127.0.0.1", port, "/v1/models", {"x-api-key": DEMO_KEY})
        assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"
    finally:
        assert relay.stop() == 0
    log = relay.log()
    assert "Traceback" not in log
