# -*- test-case-name: tests.integration.test_sdk_demo -*-
"""
Prometheus metrics: requests, latency, live streams, tokens and upstream errors.

Each relay has its own registry (no process-global state), exposed at ``GET /metrics``.
Label values are bounded: models are the configured model ids (a pattern route counts under
the model it matched; a name no configured model claims, such as a ``provider/model`` prefix
route, counts as ``other``), providers and clients are configured names, error kinds are the
Anthropic error types.

Under ``server.workers`` (``txrelay.workers``) every worker keeps its values in files under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when
prometheus-client is imported, so the supervisor sets it in the workers' environment), and a
scrape of any worker renders the sum over all of them. A gauge there needs a
``multiprocess_mode`` (``livesum``: summed over running workers), and ``set_function`` is not
seen by other workers: set the value instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from txrelay.catalog import Route

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: Where workers keep their values (prometheus-client's multiprocess mode), if they do.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
    route_attempts: Any = None
    route_retries: Any = None
    _routing_watched: bool = False
    _live_collectors: list[Any] = attrs.Factory(list)
    ledger_dropped: Any = None
    # Label children by label values: ``labels()`` validates and locks on every call.
    _request_children: dict[tuple[str, ...], tuple[Any, Any]] = attrs.Factory(dict)
    _token_children: dict[tuple[str, ...], Any] = attrs.Factory(dict)
    #: ``labels()`` results of the route metrics, as for requests (label values: config names).
    _attempt_children: dict[tuple[str, ...], Any] = attrs.Factory(dict)
    _retry_children: dict[str, Any] = attrs.Factory(dict)
    #: Multiprocess mode: the directory every worker writes to (read once, at creation).
    multiproc_dir: str | None = attrs.Factory(lambda: os.environ.get(MULTIPROC_ENV) or None)
    _draining_now: Callable[[], bool] | None = None

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
                             registry=r, multiprocess_mode="livesum")
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
        self.draining = Gauge(
            "txrelay_draining", "1 while the relay (with workers: any of them) drains, else 0.",
            registry=r, multiprocess_mode="livemax")
        # Routes, fallbacks and key pools (txrelay.routing): configured names only.
        self.route_attempts = Counter(
            "txrelay_route_attempts",
            "Upstream attempts by model, target, pool key and outcome (served, an error "
            "type, breaker_open, unfit).", ["model", "target", "key", "outcome"], registry=r)
        self.route_retries = Histogram(
            "txrelay_route_attempts_per_request", "Upstream attempts one request made.",
            ["model"], registry=r, buckets=(1, 2, 3, 4, 6, 10))
        self.ledger_dropped = Counter(
            "txrelay_ledger_dropped", "Usage ledger records dropped: its queue was full, its "
            "database failed, or the relay stopped first.", registry=r)

    def watch_drain(self, draining: Callable[[], bool]) -> None:
        """Read the drain state from ``draining`` at each scrape (and at :meth:`drain_changed`)."""
        if self.multiproc_dir is None:
            self.draining.set_function(lambda: 1.0 if draining() else 0.0)
        else:
            self._draining_now = draining
            self.drain_changed()

    def drain_changed(self) -> None:
        """The drain state may have changed: publish it to the other workers' scrapes."""
        if self._draining_now is not None:
            self.draining.set(1.0 if self._draining_now() else 0.0)

    def watch_routing(self, health: Any) -> None:
        """Export breaker and key-pool states from the ``routing`` readiness report."""
        from txrelay.routing.collector import RoutingCollector

        if not self._routing_watched:
            self._routing_watched = True
            collector = RoutingCollector(health)
            self.registry.register(collector)
            # With workers the scrape is rebuilt from the shared files; state read live
            # (the breakers, in the shared store) comes from the answering worker.
            self._live_collectors.append(collector)

    def _observe_route(self, route: Route) -> None:
        if not route.attempts:
            return
        model = model_label(route)
        attempts = self._attempt_children
        for a in route.attempts:
            akey = (model, a.target, a.key or "-", a.outcome)
            child = attempts.get(akey)
            if child is None:
                child = attempts[akey] = self.route_attempts.labels(*akey)
            child.inc()
        retries = self._retry_children.get(model)
        if retries is None:
            retries = self._retry_children[model] = self.route_retries.labels(model)
        retries.observe(
            sum(1 for a in route.attempts if a.outcome not in ("breaker_open", "unfit")))

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
        if route is not None:
            self._observe_route(route)
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
        """The text exposition format (with workers: the sum over every worker's values)."""
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        self.drain_changed()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        for collector in self._live_collectors:
            registry.register(collector)
        return generate_latest(registry)
