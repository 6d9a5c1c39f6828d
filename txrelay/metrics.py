# -*- test-case-name: tests.integration.test_sdk_demo -*-
"""
Prometheus metrics: requests, latency, live streams, tokens and upstream errors.

Each relay has its own registry (no process-global state), exposed at ``GET /metrics``.
Label values are bounded: models are the configured model ids (a pattern or prefix route is
counted under its configured model or ``provider/*``), clients are configured key names.
"""

from __future__ import annotations

from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from txrelay.catalog import Route

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_USAGE_FIELDS = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_input_tokens", "cache_read"),
    ("cache_creation_input_tokens", "cache_creation"),
)


def model_label(route: Route | None) -> str:
    """The bounded ``model`` label of a route."""
    if route is None:
        return "-"
    return route.model.id if route.model is not None else f"{route.provider}/*"


@attrs.define(eq=False)
class Metrics:
    """The relay's metrics, in a registry of their own."""

    registry: CollectorRegistry = attrs.Factory(CollectorRegistry)
    requests: Any = None
    duration: Any = None
    streams: Any = None
    tokens: Any = None
    errors: Any = None
    # Label children by label values: ``labels()`` validates and locks on every call.
    _request_children: dict[tuple[str, ...], tuple[Any, Any]] = attrs.Factory(dict)
    _token_children: dict[tuple[str, ...], Any] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "txrelay_requests", "Requests answered, by operation and outcome.",
            ["operation", "status", "provider", "model", "client"], registry=r)
        self.duration = Histogram(
            "txrelay_request_duration_seconds",
            "Time from request to the end of the response (whole stream for streams).",
            ["operation", "provider", "stream"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                     600))
        self.streams = Gauge("txrelay_streams_active", "Streams being relayed now.",
                             registry=r)
        self.tokens = Counter(
            "txrelay_tokens", "Tokens reported in responses' usage.",
            ["kind", "provider", "model", "client"], registry=r)
        self.errors = Counter(
            "txrelay_errors", "Errors answered, by Anthropic error type.",
            ["type", "provider"], registry=r)

    def observe(self, *, operation: str, status: int, route: Route | None, client: str | None,
                seconds: float, stream: bool, usage: dict[str, Any] | None,
                error_type: str | None) -> None:
        """Record one finished request."""
        provider = route.provider if route is not None else "-"
        model = model_label(route)
        who = client or "-"
        key = (operation, str(status), provider, model, who, "true" if stream else "false")
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key[:5]),
                        self.duration.labels(operation, provider, key[5]))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if error_type is not None:
            self.errors.labels(error_type, provider).inc()
        if usage:
            for field, kind in _USAGE_FIELDS:
                value = usage.get(field)
                if isinstance(value, int) and value > 0:
                    tkey = (kind, provider, model, who)
                    child = self._token_children.get(tkey)
                    if child is None:
                        child = self._token_children[tkey] = self.tokens.labels(*tkey)
                    child.inc(value)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
