# -*- test-case-name: tests.routing.test_collector -*-
"""
Prometheus gauges of the breakers and key pools, read at each scrape from the ``routing``
readiness report (what this relay last saw of the shared state).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from txrelay.routing.router import HEALTH_NAME

_STATES = ("closed", "half_open", "open")


@attrs.define(eq=False)
class RoutingCollector(Collector):
    """``txrelay_route_breaker_state`` and ``txrelay_upstream_key_cooling``."""

    health: Any

    def collect(self) -> Iterator[GaugeMetricFamily]:
        detail = self.health.detail().get(HEALTH_NAME) or {}
        breakers = GaugeMetricFamily(
            "txrelay_route_breaker_state",
            "1 for the state each target's circuit breaker was last seen in.",
            labels=["target", "state"])
        for target, entry in sorted(detail.get("targets", {}).items()):
            for state in _STATES:
                breakers.add_metric([target, state], 1.0 if entry.get("state") == state
                                    else 0.0)
        yield breakers
        keys = GaugeMetricFamily(
            "txrelay_upstream_key_cooling",
            "1 while a pool key cools after a 429 (as last seen), else 0.",
            labels=["provider", "key"])
        for provider, entries in sorted(detail.get("keys", {}).items()):
            for key, entry in sorted(entries.items()):
                keys.add_metric([provider, key], 1.0 if "cooling_until" in entry else 0.0)
        yield keys

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
