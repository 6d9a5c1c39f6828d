"""Breaker and key-pool gauges from the routing readiness report."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from txrelay.health import Health
from txrelay.routing.collector import RoutingCollector


def test_gauges_follow_the_report() -> None:
    health = Health()
    registry = CollectorRegistry()
    registry.register(RoutingCollector(health))
    assert b"txrelay_route_breaker_state{" not in generate_latest(registry)
    health.report("routing", {"targets": {"a/m": {"state": "open", "open_until": 5.0}},
                              "keys": {"p": {"k0": {"cooling_until": 9.0},
                                             "k1": {"state": "ready"}}}})
    text = generate_latest(registry).decode()
    assert 'txrelay_route_breaker_state{state="open",target="a/m"} 1.0' in text
    assert 'txrelay_route_breaker_state{state="closed",target="a/m"} 0.0' in text
    assert 'txrelay_upstream_key_cooling{key="k0",provider="p"} 1.0' in text
    assert 'txrelay_upstream_key_cooling{key="k1",provider="p"} 0.0' in text
