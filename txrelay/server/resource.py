# -*- test-case-name: tests.server.test_resource -*-
"""
The HTTP surface: one resource that routes every path of the Anthropic API and the health
endpoints, runs the pipeline, and answers in Anthropic's shape, always with a ``request-id``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txrelay import __version__, tracing
from txrelay.catalog import ModelCatalog, Route
from txrelay.ledger.record import RequestRecord, routing_fields, usage_fields
from txrelay.logs import RelayLogger, body_excerpt
from txrelay.metrics import CONTENT_TYPE, Metrics
from txrelay.pipeline import Exchange, Operation, Proceed, Reply
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError, api_error, not_found
from txrelay.protocol.events import Event
from txrelay.protocol.ids import request_id
from txrelay.protocol.jsoncodec import dumps
from txrelay.redact import redact_error, redact_headers
from txrelay.server.metrics_access import MetricsAccess
from txrelay.server.sse import SSEWriter, StreamStats, end_stream_with
from txrelay.streams import EventStream

log = RelayLogger()

_JSON = b"application/json"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_SSE_ONLY = (b"cache-control", b"x-accel-buffering")


def _encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Reply headers as bytes; a value that is not latin-1 raises before any is set."""
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


@attrs.define(eq=False)
class _FoldingSink:
    """Folds a stream into one message, for a non-streaming client."""

    accumulator: MessageAccumulator = attrs.Factory(MessageAccumulator)
    done: Deferred[None] = attrs.Factory(Deferred)
    error: RelayError | None = None
    #: The source ended the stream (else the fold failed and the source must be stopped).
    source_ended: bool = False

    def write_events(self, events: list[Event]) -> None:
        if self.done.called:
            return
        feed = self.accumulator.feed
        try:
            for e in events:
                feed(e)
        except RelayError as e:  # the stream broke its grammar: the upstream's fault
            self._fire(e)
        except Exception:
            log.failure("folding the event stream failed")
            self._fire(api_error("the relay failed while assembling the message"))

    def end(self, error: RelayError | None) -> None:
        self.source_ended = True
        self._fire(error)

    def _fire(self, error: RelayError | None) -> None:
        if not self.done.called:
            self.error = error
            self.done.callback(None)


def overloaded(message: str, retry_after: int = 2) -> RelayError:
    """A 529 ``overloaded_error`` with ``retry-after``: the relay cannot serve this now."""
    return RelayError("overloaded_error", message, headers=(("retry-after", str(retry_after)),))


#: What a request still waiting at the drain ceiling is answered (the README promises 529).
CEILING_ERROR = overloaded("the relay is shutting down and could not finish this request; "
                           "retry it")


@attrs.frozen
class ExchangeFacts:
    """
    What the access line, the ledger record, metrics, tracing and ``/admin/streams`` read of
    a request's :class:`Exchange`, copied from it once the pipeline has answered, so that a
    stream held open for minutes does not keep the request's body and its parsed form (a
    Claude Code turn: ~100 KB of bytes and several times that in Python objects) (issue 13).
    """

    operation: Operation
    #: The authenticated key's name (``auth`` stage).
    client: str | None = None
    route: Route | None = None
    #: The model the body names, if the body was parsed (never parsed for this).
    parsed_model: str | None = None
    #: ``log.body_bytes``' excerpt of the client's body (``None`` when that log is off).
    body_excerpt: str | None = None

    @classmethod
    def of(cls, exchange: Exchange, body_log_bytes: int = 0) -> ExchangeFacts:
        """The facts of ``exchange`` as it is now."""
        parsed = exchange.parsed_request
        return cls(exchange.operation, exchange.client, exchange.route,
                   parsed.model if parsed is not None else None,
                   body_excerpt(exchange.original_body, body_log_bytes)
                   if body_log_bytes > 0 else None)


@attrs.define(eq=False)
class InFlight:
    """
    One request the resource is answering.

    :ivar done: the Deferred of its handling; cancelling it abandons the request.
    :ivar client_gone: the client disconnected before the response finished (set from
        ``notifyFinish``).
    :ivar abort_reason: set when the relay itself gave up on the request (the drain
        ceiling): the client is answered with this error instead of being dropped.
    :ivar exchange: the request on its way through the pipeline; ``None`` once the pipeline
        has answered (or failed), when :attr:`facts` holds what is still read of it.
    """

    request: Request
    done: Deferred[None] | None = None
    client_gone: bool = False
    abort_reason: RelayError | None = None
    request_id: str = ""
    #: ``reactor.seconds()`` when it arrived.
    started: float = 0.0
    #: The configuration generation it is served by (see :attr:`RelayResource.generation`).
    generation: int = 0
    exchange: Exchange | None = None
    facts: ExchangeFacts | None = None
    #: Whether the client asked for a stream.
    streaming: bool = False
    stats: StreamStats = attrs.Factory(StreamStats)
    #: The status and error type it was answered with (set when its handling ends).
    status: int = 0
    error_type: str | None = None

    def lost(self, _: object) -> None:
        """
        The client left before the reply ended (``notifyFinish`` failed): cancel the
        pipeline and the upstream call; the flag stops every later write to the dead request.
        """
        self.client_gone = True
        if self.done is not None and not self.done.called:
            self.done.cancel()

    def summary(self) -> ExchangeFacts | None:
        """The facts of its exchange: kept ones, or read from the exchange still held."""
        if self.facts is None and self.exchange is not None:
            return ExchangeFacts.of(self.exchange)
        return self.facts

    def let_go(self, body_log_bytes: int = 0) -> None:
        """Keep the :attr:`facts` of the exchange and drop the exchange (and its body)."""
        if self.exchange is not None:
            self.facts = ExchangeFacts.of(self.exchange, body_log_bytes)
            self.exchange = None

    def abort(self, reason: RelayError) -> None:
        """Give up on this request now, answering ``reason``."""
        if self.done is not None and not self.done.called:
            self.abort_reason = reason
            self.done.cancel()


@attrs.define(eq=False)
class Lifecycle:
    """Shared state between the service and the resource: readiness and live requests."""

    draining: bool = False
    #: The process is shutting down (a drain that cannot be undone).
    stopping: bool = False
    live: set[InFlight] = attrs.Factory(set)
    _idle_waiters: list[Deferred[None]] = attrs.Factory(list)
    #: (generation, waiter) pairs of :meth:`settled`.
    _generation_waiters: list[tuple[int, Deferred[None]]] = attrs.Factory(list)

    def forget(self, call: InFlight) -> None:
        """``call`` is over; fire :meth:`idle` waiters once nothing is live."""
        self.live.discard(call)
        if self._generation_waiters:
            self._fire_settled()
        if not self.live:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def settled(self, generation: int) -> Deferred[None]:
        """Fires once no live request is served by ``generation`` or an older one."""
        d: Deferred[None] = Deferred()
        self._generation_waiters.append((generation, d))
        self._fire_settled()
        return d

    def _fire_settled(self) -> None:
        oldest = min((c.generation for c in self.live), default=None)
        ready = [(g, d) for g, d in self._generation_waiters if oldest is None or oldest > g]
        if ready:
            self._generation_waiters = [w for w in self._generation_waiters if w not in ready]
            for _, d in ready:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires once no request is live (cancelling it affects no request)."""
        d: Deferred[None] = Deferred()
        if self.live:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def abort_all(self, reason: RelayError) -> int:
        """Answer every live request with ``reason`` now; how many there were."""
        calls = list(self.live)
        for call in calls:
            call.abort(reason)
        return len(calls)


def _headers(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
    return out


def _query(request: Request) -> dict[str, str]:
    return {
        k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace")
        for k, v in (request.args or {}).items()
        if v
    }


def _route(method: bytes, path: bytes) -> tuple[Operation | str, str | None]:
    """The operation for ``method path`` (query string already removed; R-X2)."""
    path = path.rstrip(b"/") or b"/"
    if path == b"/v1/messages":
        return ("messages" if method == b"POST" else "405:POST"), None
    if path == b"/v1/messages/count_tokens":
        return ("count_tokens" if method == b"POST" else "405:POST"), None
    if path == b"/v1/models":
        return ("models.list" if method in (b"GET", b"HEAD") else "405:GET"), None
    if path.startswith(b"/v1/models/"):
        model = path[len(b"/v1/models/"):].decode("utf-8", "replace")
        return ("models.get" if method in (b"GET", b"HEAD") else "405:GET"), model
    if path == b"/":
        return "root", None
    if path == b"/health":
        return "health", None
    if path == b"/health/ready":
        return "ready", None
    if path == b"/metrics" and method in (b"GET", b"HEAD"):
        return "metrics", None
    if path == b"/admin" or path.startswith(b"/admin/"):
        return "admin", None
    return "404", None


@attrs.define(eq=False)
class RelayResource(Resource):
    """Routes requests and runs the pipeline."""

    pipeline: Proceed
    catalog: ModelCatalog
    reactor: Any
    ping_interval: float = 10.0
    access_log: bool = True
    lifecycle: Lifecycle = attrs.Factory(Lifecycle)
    metrics: Metrics | None = None
    #: Who may read ``/metrics`` here (default: loopback peers only).
    metrics_access: MetricsAccess = attrs.Factory(MetricsAccess)
    #: What answers ``/admin/…`` (:class:`txrelay.server.admin.AdminResource`); 404 if unset.
    admin: Resource | None = None
    #: Bumped by each configuration reload; every request records the one it started on.
    generation: int = 0
    #: ``log.body_bytes``: log each request body, redacted and cut to this size (0: never).
    body_log_bytes: int = 0
    #: The status page's recorder (:class:`txrelay.server.status_page.StatusRecorder`).
    status: Any = None
    #: Components' readiness reports (:class:`txrelay.health.Health`) for /health/ready.
    health: Any = None
    #: Called with a :class:`RequestRecord` of each finished request (the usage ledger).
    observers: tuple[Callable[[RequestRecord], None], ...] = ()
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)
        if self.metrics is not None:
            lifecycle = self.lifecycle
            self.metrics.watch_drain(lambda: lifecycle.draining)
            if self.health is not None:
                self.metrics.watch_routing(self.health)

    def render(self, request: Request) -> Any:
        assert request.path is not None
        if self.admin is not None and _route(b"", request.path)[0] == "admin":
            # Before the drain's answers: an operator drives the drain through these.
            return self.admin.render(request)
        rid = request_id()
        request.setHeader(b"request-id", rid.encode("ascii"))
        if self.lifecycle.draining:
            # A request that arrived on a kept-alive connection: close it after the answer
            # (twisted.web re-decides persistence on each request's headers).
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
        assert request.method is not None and request.path is not None
        op, model_id = _route(request.method, request.path)
        if op == "metrics":
            if self.metrics is None:
                op = "404"
            elif (denied := self.metrics_access.denied(request)) is not None:
                self._write_error(InFlight(request), denied, rid)
                return NOT_DONE_YET
            else:
                request.setHeader(b"content-type", CONTENT_TYPE)
                return self.metrics.render()
        if op == "admin":
            op = "404"
        if op in ("root", "health", "ready"):
            body = self._simple(request, op)
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            return b"" if request.method == b"HEAD" else body
        call = InFlight(request, request_id=rid, started=self.reactor.seconds(),
                        generation=self.generation)
        # (Bound methods and plain functions with arguments rather than closures: these
        # live as long as the request, a held-open stream included.)
        request.notifyFinish().addErrback(call.lost)
        self.lifecycle.live.add(call)
        traced = tracing.active()
        call.done = Deferred.fromCoroutine(
            self._serve(call, rid, op, model_id) if traced is None
            else self._traced(traced, call, rid, op, model_id))
        call.done.addBoth(_forget, self.lifecycle, call)
        return NOT_DONE_YET

    def _simple(self, request: Request, op: str) -> bytes:
        request.setHeader(b"content-type", _JSON)
        if op == "root":
            return dumps({"name": "txrelay", "version": __version__, "api": "/v1/messages"})
        if op != "ready":
            return dumps({"status": "ok"})
        body: dict[str, Any] = {"status": "ok"}
        if self.health is not None:
            if not self.health.ready:
                body["status"] = "degraded"
            if detail := self.health.detail():
                body["detail"] = detail
        if self.lifecycle.draining:
            body["status"] = "draining"
        if body["status"] != "ok":
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"5")
        return dumps(body)

    async def _traced(self, traced: tracing.Tracing, call: InFlight, rid: str, op: str,
                      model_id: str | None) -> None:
        """:meth:`_serve` in a server span."""
        request = call.request
        method = request.method.decode("latin-1")
        route = ("/v1/models/{model_id}" if op == "models.get"
                 else request.path.decode("utf-8", "replace"))
        with tracing.server_span(traced, f"{method} {route}", _headers(request), {
            "http.request.method": method, "http.route": route,
            "url.path": request.path.decode("utf-8", "replace"),
            "txrelay.request_id": rid, "txrelay.operation": op,
        }) as span:
            # _serve returns once the reply is over: for a stream, when the stream ended.
            try:
                await self._serve(call, rid, op, model_id)
            finally:
                span.set_attribute("http.response.status_code", call.status)
                facts = call.summary()
                if facts is not None and facts.client is not None:
                    span.set_attribute("txrelay.client", facts.client)
                if facts is not None and facts.route is not None:
                    span.set_attribute("txrelay.provider", facts.route.provider)
                    span.set_attribute("gen_ai.request.model", facts.route.upstream_model)
                if call.error_type is not None:
                    tracing.set_error(span, call.error_type)
                elif call.status == 499:
                    span.set_attribute("txrelay.client_gone", True)

    async def _serve(self, call: InFlight, rid: str, op: str, model_id: str | None) -> None:
        request = call.request
        started = time.monotonic()
        status = 200
        streamed = False
        usage: dict[str, Any] | None = None
        error_type: str | None = None
        try:
            if self.lifecycle.draining:
                raise overloaded("the relay is shutting down; retry shortly")
            if op == "404":
                raise not_found(f"no such endpoint: {request.method.decode()} "
                                f"{request.path.decode('utf-8', 'replace')}")
            if op.startswith("405:"):
                raise RelayError("invalid_request_error",
                                 f"method {request.method.decode()} is not allowed here; "
                                 f"use {op[4:]}", status=405)
            exchange = call.exchange = self._exchange(request, rid, cast(Operation, op),
                                                      model_id)
            reply = await self.pipeline(exchange)
            if self.metrics is not None:
                self.metrics.observe_first_byte(exchange.route, time.monotonic() - started)
            status = reply.status
            wants_stream = False
            if reply.stream is not None:
                try:
                    if call.abort_reason is not None:  # a stage swallowed the cancel
                        raise call.abort_reason
                    wants_stream = _wants_stream(exchange)
                except BaseException:
                    reply.stream.stop()
                    raise
            # What follows needs only a few facts of the exchange: neither the request body
            # nor its parsed form is kept while the reply streams (a stage that still needs
            # them holds the exchange itself).
            del exchange
            call.let_go(self.body_log_bytes)
            if reply.stream is not None:
                if wants_stream:
                    streamed = call.streaming = True
                    # Awaited here, not in a coroutine of its own: one frame fewer per
                    # held-open stream.
                    writer = self._stream(call, reply, reply.stream)
                    try:
                        await writer.done
                    except BaseException:
                        # Whatever went wrong (cancel, client gone, a bug), nothing may keep
                        # streaming.
                        writer.release()
                        raise
                    finally:
                        if self.metrics is not None:
                            self.metrics.streams.dec()
                    status, usage, error_type = self._streamed(call, reply, writer)
                    return
                reply = await self._accumulate(reply.stream, reply)
                status = reply.status
                usage = reply.body.get("usage")
            self._write_json(call, reply.status, reply.body, reply.headers)
        except CancelledError:
            if call.abort_reason is not None and not call.client_gone:
                status, error_type = call.abort_reason.status, call.abort_reason.type
                self._write_error(call, call.abort_reason, rid)
            else:
                status = 499
        except RelayError as e:
            # A cancel for the ceiling that surfaced as an upstream error is the ceiling's.
            answer = call.abort_reason or e
            status, error_type = answer.status, answer.type
            self._write_error(call, answer, rid)
        except Exception:
            status, error_type = 500, "api_error"
            if call.abort_reason is not None:
                status, error_type = call.abort_reason.status, call.abort_reason.type
                self._write_error(call, call.abort_reason, rid)
            else:
                log.failure("unhandled error serving request {request_id}", request_id=rid)
                self._write_error(call, api_error(f"internal relay error (request {rid})"),
                                  rid)
        finally:
            call.status, call.error_type = status, error_type
            call.let_go(self.body_log_bytes)
            facts = call.facts
            if streamed and request.startedWriting and not call.stats.terminal:
                gone = call.client_gone or status == 499
                # A client leaving mid-stream is an ordinary event, not an operator's concern.
                (log.info if gone else log.warn)(
                    "stream {request_id} ended without message_stop or an error event "
                    "after {age:.1f}s ({why}); last event: {last_event}",
                    request_id=rid, age=self.reactor.seconds() - call.started,
                    why="the client went away" if gone else "ended by the relay",
                    last_event=call.stats.last_event or "none")
            if self.access_log:
                self._log(call, rid, status, streamed, usage)
            if facts is not None and facts.body_excerpt is not None:
                log.info("request body {request_id}: {body}", request_id=rid,
                         body=facts.body_excerpt)
            if self.metrics is not None:
                self.metrics.observe(
                    operation=op, status=status,
                    route=facts.route if facts is not None else None,
                    client=facts.client if facts is not None else None,
                    seconds=time.monotonic() - started, stream=streamed, usage=usage,
                    error_type=error_type, upstream_error=_upstream_failed(call, status))
                if call.stats.first_content_at is not None and facts is not None:
                    self.metrics.observe_first_token(
                        facts.route, call.stats.first_content_at - call.started)
            if self.status is not None:
                self.status.observe(
                    route=facts.route if facts is not None else None,
                    client=facts.client if facts is not None else None,
                    status=status, seconds=time.monotonic() - started, usage=usage,
                    error_type=error_type, now=time.time())
            if self.observers:
                self._observe(call, op, status, streamed, usage, error_type)

    def _exchange(
        self, request: Request, rid: str, op: Operation, model_id: str | None
    ) -> Exchange:
        raw = b""
        if op in ("messages", "count_tokens"):
            raw = cast(io.BytesIO, request.content).getvalue()
            # The exchange has the bytes now: twisted.web's buffer (which shares them) would
            # keep them as long as the request lives, a stream included.
            request.content = None
        return Exchange(op, _headers(request), rid, raw_body=raw, query=_query(request),
                        model_id=model_id)

    def _stream(self, call: InFlight, reply: Reply, stream: EventStream) -> SSEWriter:
        """
        Commit ``stream``'s response head and start relaying it; the caller awaits the
        writer's ``done`` (and then decrements the open-streams gauge this incremented).
        """
        request = call.request
        writer = SSEWriter(request, stream, self.reactor, self.ping_interval,
                           stats=call.stats)
        counted = False
        try:
            # Encode every header before setting any, so a bad one leaves a clean response
            # for the JSON error.
            headers = [*_SSE_HEADERS, *_encoded(redact_headers(reply.headers))]
            request.setResponseCode(reply.status)
            for name, value in headers:
                request.setHeader(name, value)
            if self.metrics is not None:
                self.metrics.streams.inc()
                counted = True
            writer.start()
        except BaseException:
            writer.release()
            if counted:
                assert self.metrics is not None
                self.metrics.streams.dec()
            raise
        return writer

    def _streamed(self, call: InFlight, reply: Reply,
                  writer: SSEWriter) -> tuple[int, dict[str, Any] | None, str | None]:
        """How a relayed stream ended: the status to log, the final usage, the error type."""
        if writer.client_gone:
            return 499, writer.usage, None
        if writer.error is not None:
            if not call.request.finished and not call.client_gone:
                # The writer failed before committing anything: answer it as JSON.
                raise writer.error
            return writer.error.status, writer.usage, writer.error.type
        return reply.status, writer.usage, None

    async def _accumulate(self, stream: EventStream, reply: Reply) -> Reply:
        sink = _FoldingSink()
        try:
            stream.start(sink)
            await sink.done
        except BaseException:
            if not sink.source_ended:
                stream.stop()
            raise
        if not sink.source_ended:
            stream.stop()
        if sink.error is not None:
            raise sink.error
        return Reply(status=reply.status, body=sink.accumulator.result(), headers=reply.headers)

    def _write_json(
        self, call: InFlight, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> None:
        request = call.request
        if request.finished or call.client_gone:
            return
        data = dumps(body)
        extra = _encoded(redact_headers(headers))
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON)
        for name, value in extra:
            request.setHeader(name, value)
        request.setHeader(b"content-length", str(len(data)).encode("ascii"))
        request.write(data)
        request.finish()

    def _write_error(self, call: InFlight, error: RelayError, rid: str) -> None:
        """Answer ``error``: a JSON error, or an error event if the stream was committed."""
        request = call.request
        if request.finished or call.client_gone:
            return
        error = redact_error(error)  # no configured secret reaches a client (issue 8.5)
        try:
            if request.startedWriting:
                end_stream_with(request, error, call.stats)
                return
            for name in _SSE_ONLY:
                request.responseHeaders.removeHeader(name)
            self._write_json(call, error.status, error.body(rid), list(error.headers))
        except Exception:
            log.failure("cannot send the error answer of request {request_id}",
                        request_id=rid)
            request.channel.persistent = False
            if request.channel.transport is not None:
                request.channel.transport.loseConnection()

    def _log(
        self, call: InFlight, rid: str, status: int, streamed: bool,
        usage: dict[str, Any] | None,
    ) -> None:
        """The access line: who asked for what, where it went, how it ended, how long."""
        request, facts = call.request, call.summary()
        route = facts.route if facts is not None else None
        first = call.stats.first_content_at
        usage = usage or {}
        log.info(
            "{method} {path} {status} {duration_ms:.1f}ms request_id={request_id} "
            "client={client} model={model} provider={provider} served={served_model} "
            "session={session_id} stream={stream} ttft_ms={ttft_ms} "
            "tokens={input_tokens}/{output_tokens} target={target} attempts={attempts}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=status,
            # The reactor's clock, like the time to first token beside it.
            duration_ms=(self.reactor.seconds() - call.started) * 1000,
            request_id=rid,
            client=facts.client if facts is not None else None,
            session_id=_session_id(request),
            model=route.requested if route else None,
            served_model=route.upstream_model if route else None,
            provider=route.provider if route else None,
            target=route.target if route else None,
            attempts=_attempts(route),
            stream=streamed,
            ttft_ms=None if first is None else round((first - call.started) * 1000, 1),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            cache_read_tokens=usage.get("cache_read_input_tokens"),
            cache_creation_tokens=usage.get("cache_creation_input_tokens"),
        )

    def _observe(self, call: InFlight, op: str, status: int, streamed: bool,
                 usage: dict[str, Any] | None, error_type: str | None) -> None:
        """Hand the finished request, as one :class:`RequestRecord`, to the observers."""
        facts = call.summary()
        route = facts.route if facts is not None else None
        first = call.stats.first_content_at
        duration = self.reactor.seconds() - call.started
        requested = route.requested if route else None
        if requested is None and facts is not None:
            # An unrouted request (unknown model): its model if the body was parsed anyway;
            # never parse it here (an unauthenticated body stays unread).
            requested = facts.parsed_model
        record = RequestRecord(
            at=time.time() - duration, request_id=call.request_id, operation=op[:16],
            status=status, duration=duration,
            key=facts.client if facts is not None else None,
            session=_session_id(call.request),
            model_requested=requested[:200] if isinstance(requested, str) else None,
            model=route.model.id if route and route.model else None,
            model_served=route.upstream_model[:200] if route else None,
            provider=route.provider if route else None, stream=streamed,
            ttft=None if first is None else first - call.started, error_type=error_type,
            **usage_fields(usage), **routing_fields(route))
        for observe in self.observers:
            try:
                observe(record)
            except Exception:
                log.failure("a request observer failed on {request_id}",
                            request_id=call.request_id)


def _forget(_: object, lifecycle: Lifecycle, call: InFlight) -> None:
    lifecycle.forget(call)


def _wants_stream(exchange: Exchange) -> bool:
    """Whether the client asked for a stream (its body is parsed here if it was not yet)."""
    req = exchange.request
    return req is not None and req.stream


def _attempts(route: Any) -> int | None:
    """How many upstream calls a routed request made (``txrelay.routing``)."""
    if route is None or not route.attempts:
        return None
    return sum(1 for a in route.attempts if a.outcome not in ("breaker_open", "unfit"))


def _session_id(request: Request) -> str | None:
    """Claude Code's session id, capped and printable (it is client-supplied)."""
    raw = request.getHeader(b"x-claude-code-session-id")
    if not raw:
        return None
    text = raw[:128].decode("latin-1")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _upstream_failed(call: InFlight, status: int) -> bool:
    """Whether a routed request failed on its backend's side, not the client's or a drain's."""
    facts = call.summary()
    return (facts is not None and facts.route is not None
            and call.abort_reason is None and (status >= 500 or status in (408, 429)))
