# -*- test-case-name: tests.test_health -*-
"""The readiness reports components publish (txrelay.health)."""

from __future__ import annotations

from tests.server.memory import Harness
from txrelay.health import Health


def test_reports_replace_and_clear() -> None:
    h = Health()
    assert h.ready and h.detail() == {}
    h.report("state", {"store": "redis", "reachable": False}, ready=False)
    h.report("breakers", {"openai/gpt": "open"})
    assert not h.ready
    assert h.detail() == {"breakers": {"openai/gpt": "open"},
                          "state": {"store": "redis", "reachable": False}}
    h.report("state", {"store": "redis", "reachable": True})
    assert h.ready
    h.clear("breakers")
    assert list(h.detail()) == ["state"]


async def _never(exchange: object) -> object:
    raise AssertionError("not called")


def test_ready_endpoint_shows_reports_and_turns_503_when_one_holds_back() -> None:
    h = Harness.over(_never)  # type: ignore[arg-type]
    h.resource.health = health = Health()
    conn = h.connect()
    conn.get("/health/ready")
    assert (conn.response().status, conn.response().json()) == (200, {"status": "ok"})
    health.report("breakers", {"openai/gpt-x": "open"})
    conn = h.connect()
    conn.get("/health/ready")
    assert conn.response().json() == {"status": "ok",
                                      "detail": {"breakers": {"openai/gpt-x": "open"}}}
    health.report("state", {"store": "redis", "reachable": False}, ready=False)
    conn = h.connect()
    conn.get("/health/ready")
    got = conn.response()
    assert got.status == 503 and got.headers["retry-after"] == "5"
    assert got.json()["status"] == "degraded"
    assert got.json()["detail"]["state"] == {"store": "redis", "reachable": False}
