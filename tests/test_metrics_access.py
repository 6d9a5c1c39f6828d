"""Who may read /metrics, in memory: peers, admin keys, the metrics-only resource."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.test.requesthelper import DummyRequest

from txrelay.config import hash_key
from txrelay.metrics import Metrics
from txrelay.server.metrics_access import MetricsAccess, MetricsResource, is_local_peer

ADMIN = "admin-key-for-tests"


def request(host: str | None, headers: dict[str, str] | None = None,
            path: bytes = b"/metrics") -> DummyRequest:
    r = DummyRequest([path.lstrip(b"/")])
    r.path = path
    r.client = IPv4Address("TCP", host, 5555) if host and ":" not in host else (
        IPv6Address("TCP", host, 5555) if host else UNIXAddress(b"/run/x.sock"))
    for k, v in (headers or {}).items():
        r.requestHeaders.setRawHeaders(k, [v])
    return r


def test_local_peers() -> None:
    assert is_local_peer(IPv4Address("TCP", "127.0.0.1", 1))
    assert is_local_peer(IPv4Address("TCP", "127.8.9.10", 1))
    assert is_local_peer(IPv6Address("TCP", "::1", 1))
    assert is_local_peer(IPv6Address("TCP", "::ffff:127.0.0.1", 1))
    assert is_local_peer(UNIXAddress(b"/run/txrelay.sock"))
    assert not is_local_peer(IPv4Address("TCP", "192.0.2.7", 1))
    assert not is_local_peer(IPv6Address("TCP", "::ffff:10.0.0.1", 1))
    assert not is_local_peer(IPv6Address("TCP", "fd00::2", 1))
    assert not is_local_peer(None)


def test_default_rule_is_loopback_only() -> None:
    access = MetricsAccess()
    assert access.denied(request("127.0.0.1")) is None
    assert access.denied(request(None)) is None  # a Unix socket
    denied = access.denied(request("192.0.2.7", {"x-api-key": ADMIN}))
    assert denied is not None and denied.status == 403 and denied.type == "permission_error"
    assert "loopback" in denied.message


def test_admin_keys_unlock_from_anywhere() -> None:
    access = MetricsAccess({"ops": bytes.fromhex(hash_key(ADMIN))}, loopback=False)
    assert access.denied(request("192.0.2.7", {"authorization": f"Bearer {ADMIN}"})) is None
    assert access.denied(request("192.0.2.7", {"x-api-key": ADMIN})) is None
    wrong = access.denied(request("192.0.2.7", {"x-api-key": "nope"}))
    assert wrong is not None and wrong.status == 401
    # With a metrics listener, loopback peers of the main listener need the key too.
    alone = access.denied(request("127.0.0.1"))
    assert alone is not None and alone.status == 403 and "metrics_listen" in alone.message


def test_metrics_only_resource() -> None:
    resource = MetricsResource(Metrics())
    ok = request("192.0.2.7")
    body = resource.render(ok)
    assert b"txrelay_streams_active" in body
    other = request("192.0.2.7", path=b"/v1/messages")
    error = json.loads(resource.render(other))
    assert other.responseCode == 404 and error["error"]["type"] == "not_found_error"
    assert other.responseHeaders.getRawHeaders(b"request-id")


def test_metrics_settings_are_checked() -> None:
    from txrelay.config import ConfigError, admin_key_digests, parse_config

    raw = {"providers": [{"name": "d", "kind": "demo"}], "models": [{"id": "m", "provider": "d"}],
           "pipeline": [{"type": "translate"}],
           "server": {"metrics": False, "metrics_listen": ["tcp:9464:interface=127.0.0.1"],
                      "admin_keys": [{"name": "ops", "env": "NOT_SET_ANYWHERE"},
                                     {"name": "x", "sha256": "zz"}]}}
    try:
        parse_config(raw, env={})
    except ConfigError as e:
        problems = e.problems
    else:
        raise AssertionError("accepted")
    assert problems == [
        "server.admin_keys[0].env: environment variable NOT_SET_ANYWHERE is not set",
        "server.admin_keys[1].sha256: not a SHA-256 hex digest (64 hex characters)",
        "server.metrics_listen: set, but server.metrics is false",
    ]
    raw["server"] = {"admin_keys": [{"name": "ops", "env": "ADMIN"}]}
    cfg = parse_config(raw, env={"ADMIN": ADMIN})
    assert admin_key_digests(cfg, {"ADMIN": ADMIN})[0] == {"ops": bytes.fromhex(hash_key(ADMIN))}
