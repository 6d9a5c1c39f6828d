# -*- test-case-name: tests.test_tracing -*-
"""
OpenTelemetry spans for requests, stages and upstream calls (the optional ``tracing`` extra).

Off by default. While off, nothing here imports OpenTelemetry and the hot path only reads
:func:`active` (``None``): no span objects are made. When ``[tracing] enabled = true``,
:func:`configure` builds a tracer provider (OTLP over HTTP, or the console) that belongs to
txrelay (the process-global OpenTelemetry provider is left alone), and:

- the server edge opens a SERVER span per API request, continuing the client's W3C
  ``traceparent``/``tracestate`` (:func:`server_span`);
- :func:`txrelay.pipeline.compose` wraps each stage in an INTERNAL span named by its label;
- :class:`txrelay.upstream.http.UpstreamClient` opens a CLIENT span per upstream request and
  sends its ``traceparent`` upstream (:func:`client_span`). Only the method, scheme, host,
  port, path and status are recorded: no query string (Gemini keys travel there), no header,
  no body.

Spans are made current with ``contextvars``: Twisted runs each coroutine
(``Deferred.fromCoroutine``) in one copied context, so a span made current in the request's
coroutine is the parent of everything that coroutine awaits or starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer


@attrs.frozen
class TracingConfig:
    """The ``[tracing]`` table."""

    enabled: bool = False
    exporter: Literal["otlp", "console"] = "otlp"
    #: The OTLP/HTTP traces endpoint (``http://host:4318/v1/traces``); required for ``otlp``.
    endpoint: str | None = None
    service_name: str = "txrelay"
    #: The share of new traces (without a sampled parent) that are recorded, 0 to 1.
    sample_ratio: float = 1.0


def tracing_problems(cfg: TracingConfig, where: str = "tracing") -> list[str]:
    """
    What is wrong with ``cfg``, in plain words (empty: nothing). Whether OpenTelemetry is
    installed is the environment's matter, checked when the app is built
    (:func:`missing_problem`).
    """
    problems: list[str] = []
    if not 0.0 <= cfg.sample_ratio <= 1.0:
        problems.append(f"{where}.sample_ratio: must be between 0 and 1")
    if not cfg.service_name:
        problems.append(f"{where}.service_name: must not be empty")
    if cfg.exporter == "otlp" and cfg.enabled and not cfg.endpoint:
        problems.append(f"{where}.endpoint: required for the otlp exporter "
                        "(e.g. http://127.0.0.1:4318/v1/traces)")
    if cfg.endpoint is not None:
        parts = urlsplit(cfg.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{where}.endpoint: not a URL (expected http:// or https://…)")
        if cfg.exporter != "otlp":
            problems.append(f"{where}.endpoint: only used by the otlp exporter")
    return problems


def missing_problem(cfg: TracingConfig) -> str | None:
    """The problem to report when ``cfg`` turns tracing on without OpenTelemetry installed."""
    if cfg.enabled and not available():
        return ("tracing.enabled: OpenTelemetry is not installed; "
                "pip install 'txrelay[tracing]'")
    return None


def available() -> bool:
    """Whether the OpenTelemetry SDK can be imported."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


@attrs.define(eq=False)
class Tracing:
    """The tracer txrelay records with, and its provider (shut down on reconfigure)."""

    provider: TracerProvider
    tracer: Tracer
    config: TracingConfig | None = None


_active: Tracing | None = None


def active() -> Tracing | None:
    """The running tracing, or ``None`` when tracing is off (the hot-path check)."""
    return _active


def install(exporter: SpanExporter, *, service_name: str = "txrelay",
            sample_ratio: float = 1.0, batch: bool = False,
            config: TracingConfig | None = None) -> Tracing:
    """Record spans to ``exporter`` from now on (tests use an in-memory exporter)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from txrelay import __version__

    global _active
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name,
                                  "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    shutdown()
    _active = Tracing(provider, provider.get_tracer("txrelay", __version__), config)
    return _active


def configure(cfg: TracingConfig) -> None:
    """Make ``cfg`` the tracing in force (a no-op when it already is)."""
    if _active is not None and _active.config == cfg:
        return
    if not cfg.enabled:
        shutdown()
        return
    exporter: SpanExporter
    if cfg.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter(service_name=cfg.service_name)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=cfg.endpoint)
    # The batch processor exports from its own thread, never on the reactor.
    install(exporter, service_name=cfg.service_name, sample_ratio=cfg.sample_ratio,
            batch=True, config=cfg)


def detach() -> Tracing | None:
    """Stop tracing new work; the tracing that was running (its provider still to shut)."""
    global _active
    old, _active = _active, None
    return old


def shutdown() -> None:
    """
    Stop tracing; the old provider flushes and shuts down on a thread of its own, so an
    exporter that is slow to answer never blocks the reactor.
    """
    old = detach()
    if old is not None:
        threading.Thread(target=old.provider.shutdown, name="txrelay-tracing-shutdown",
                         daemon=True).start()


@contextmanager
def server_span(tracing: Tracing, name: str, headers: Mapping[str, str],
                attributes: Mapping[str, Any]) -> Iterator[Span]:
    """
    A current SERVER span continuing the trace in ``headers`` (``traceparent``), ended on
    leaving the block however it is left.
    """
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(dict(headers))
    span = tracing.tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER,
                                     attributes=dict(attributes))
    with trace.use_span(span, end_on_exit=True, record_exception=False,
                        set_status_on_exception=False):
        yield span


@contextmanager
def internal_span(tracing: Tracing, name: str) -> Iterator[Span]:
    """A current INTERNAL span (a stage), ended on leaving the block."""
    from opentelemetry import trace

    with tracing.tracer.start_as_current_span(name, kind=trace.SpanKind.INTERNAL,
                                              record_exception=False,
                                              set_status_on_exception=False) as span:
        yield span


@contextmanager
def client_span(tracing: Tracing, method: str, url: str,
                headers: MutableMapping[str, str]) -> Iterator[Span]:
    """
    A current CLIENT span for an upstream request to ``url``; writes its ``traceparent``
    (and ``tracestate``) into ``headers``. Ended on leaving the block.
    """
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": parts.scheme,
        "url.path": parts.path,
        "server.address": parts.hostname or "",
    }
    port = parts.port or (443 if parts.scheme == "https" else 80)
    attributes["server.port"] = port
    with tracing.tracer.start_as_current_span(f"{method}", kind=trace.SpanKind.CLIENT,
                                              attributes=attributes,
                                              record_exception=False,
                                              set_status_on_exception=False) as span:
        TraceContextTextMapPropagator().inject(headers)
        yield span


def set_error(span: Span, error_type: str, description: str | None = None) -> None:
    """Mark ``span`` failed with ``error_type`` (``error.type``); no message text."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))
