# -*- test-case-name: tests.integration.test_sdk_demo -*-
"""
Prometheus metrics: requests, latency, live streams, tokens and upstream errors.

Each relay has its own registry (no process-global state), exposed at ``GET /metrics``.
Label values are bounded: models are the configured model ids (a pattern route counts under
the model it matched; a name no configured model claims, such as a ``provider/model`` prefix
route, counts as ``other``), providers and clients are configured names, error kinds are the
Anthropic error types.
"""

from __future__ import annotations

from collections.abc import Callable
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
    return route.model.id if route.model is not None else "other"


@attrs.define(eq=False)
class Metrics:
    """The relay's metrics, in a registry of their own."""

    registry: CollectorRegistry = attrs.Factory(CollectorRegistry)
    requests: Any = None
    duration: Any = None
    streams: Any = None
    tokens: Any = None
    errors: Any = None
    upstream_errors: Any = None
    first_byte: Any = None
    first_token: Any = None
    draining: Any = None
    ledger_dropped: Any = None
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
        self.upstream_errors = Counter(
            "txrelay_upstream_errors",
            "Requests a backend failed (5xx, 429, 529, timeouts), by provider and error type.",
            ["provider", "kind"], registry=r)
        latency = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60)
        self.first_byte = Histogram(
            "txrelay_upstream_first_byte_seconds",
            "Time from the request to the backend's reply headers (an HTTP backend's first "
            "byte, with the stages before it).", ["provider"], registry=r, buckets=latency)
        self.first_token = Histogram(
            "txrelay_first_token_seconds",
            "Time from the request to the first content delta written to a streaming client.",
            ["provider", "model"], registry=r, buckets=latency)
        self.draining = Gauge("txrelay_draining", "1 while the relay drains, else 0.",
                              registry=r)
        self.ledger_dropped = Counter(
            "txrelay_ledger_dropped", "Usage ledger records dropped: its queue was full, its "
            "database failed, or the relay stopped first.", registry=r)

    def watch_drain(self, draining: Callable[[], bool]) -> None:
        """Read the drain state from ``draining`` at each scrape."""
        self.draining.set_function(lambda: 1.0 if draining() else 0.0)

    def observe_first_byte(self, route: Route | None, seconds: float) -> None:
        """Record the time until a routed request's reply headers."""
        if route is not None:
            self.first_byte.labels(route.provider).observe(seconds)

    def observe_first_token(self, route: Route | None, seconds: float) -> None:
        """Record a stream's time to its first content delta."""
        if route is not None:
            self.first_token.labels(route.provider, model_label(route)).observe(seconds)

    def observe(self, *, operation: str, status: int, route: Route | None, client: str | None,
                seconds: float, stream: bool, usage: dict[str, Any] | None,
                error_type: str | None, upstream_error: bool = False) -> None:
        """Record one finished request (``upstream_error``: its backend failed it)."""
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
            if upstream_error:
                self.upstream_errors.labels(provider, error_type).inc()
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
