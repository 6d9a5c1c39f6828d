# -*- test-case-name: tests.test_server -*-
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

from txrelay import __version__
from txrelay.catalog import ModelCatalog
from txrelay.logs import RelayLogger
from txrelay.metrics import CONTENT_TYPE, Metrics
from txrelay.pipeline import Exchange, Operation, Proceed, Reply
from txrelay.protocol.accumulate import MessageAccumulator
from txrelay.protocol.errors import RelayError, api_error, invalid_request, not_found
from txrelay.protocol.events import Event
from txrelay.protocol.ids import request_id
from txrelay.protocol.jsoncodec import dumps
from txrelay.redact import redact_error, redact_headers
from txrelay.server.metrics_access import MetricsAccess
from txrelay.server.sse import SSEWriter
from txrelay.streams import EventStream

log = RelayLogger()

_JSON = b"application/json"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@attrs.define(eq=False)
class _FoldingSink:
    """Folds a stream into one message, for a non-streaming client."""

    accumulator: MessageAccumulator = attrs.Factory(MessageAccumulator)
    done: Deferred[None] = attrs.Factory(Deferred)
    error: RelayError | None = None

    def write_events(self, events: list[Event]) -> None:
        feed = self.accumulator.feed
        for e in events:
            feed(e)

    def end(self, error: RelayError | None) -> None:
        self.error = error
        if not self.done.called:
            self.done.callback(None)


@attrs.define(eq=False)
class Lifecycle:
    """Shared state between the service and the resource: readiness and live requests."""

    draining: bool = False
    live: set[Deferred[None]] = attrs.Factory(set)


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
    on_event: Callable[[list[Event]], None] | None = None
    metrics: Metrics | None = None
    #: Who may read ``/metrics`` here (default: loopback peers only).
    metrics_access: MetricsAccess = attrs.Factory(MetricsAccess)
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> Any:
        rid = request_id()
        request.setHeader(b"request-id", rid.encode("ascii"))
        assert request.method is not None and request.path is not None
        op, model_id = _route(request.method, request.path)
        if op == "metrics":
            if self.metrics is None:
                op = "404"
            elif (denied := self.metrics_access.denied(request)) is not None:
                self._write_error(request, denied, rid)
                return NOT_DONE_YET
            else:
                request.setHeader(b"content-type", CONTENT_TYPE)
                return self.metrics.render()
        if op in ("root", "health", "ready"):
            body = self._simple(request, op)
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            return b"" if request.method == b"HEAD" else body
        d = Deferred.fromCoroutine(self._handle(request, rid, op, model_id))
        self.lifecycle.live.add(d)

        def forget(_: object) -> None:
            self.lifecycle.live.discard(d)

        d.addBoth(forget)
        # A client that leaves before the reply cancels the pipeline (and the upstream call).
        request.notifyFinish().addErrback(lambda _: d.cancel() if not d.called else None)
        return NOT_DONE_YET

    def _simple(self, request: Request, op: str) -> bytes:
        request.setHeader(b"content-type", _JSON)
        if op == "ready" and self.lifecycle.draining:
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"5")
            return dumps({"status": "draining"})
        if op == "root":
            return dumps({"name": "txrelay", "version": __version__, "api": "/v1/messages"})
        return dumps({"status": "ok"})

    async def _handle(
        self, request: Request, rid: str, op: str, model_id: str | None
    ) -> None:
        started = time.monotonic()
        exchange: Exchange | None = None
        status = 200
        streamed = False
        usage: dict[str, Any] | None = None
        error_type: str | None = None
        try:
            if self.lifecycle.draining:
                raise RelayError(
                    "overloaded_error", "the relay is shutting down; retry shortly",
                    status=503, headers=(("retry-after", "2"),),
                )
            if op == "404":
                raise not_found(f"no such endpoint: {request.method.decode()} "
                                f"{request.path.decode('utf-8', 'replace')}")
            if op.startswith("405:"):
                raise RelayError("invalid_request_error",
                                 f"method {request.method.decode()} is not allowed here; "
                                 f"use {op[4:]}", status=405)
            if getattr(request, "too_large", False):
                limit = getattr(getattr(request, "site", None), "max_request_bytes", 0)
                request.channel.persistent = False
                raise RelayError(
                    "request_too_large",
                    f"request body is larger than the relay's limit of {limit} bytes",
                )
            exchange = self._exchange(request, rid, cast(Operation, op), model_id)
            reply = await self.pipeline(exchange)
            status = reply.status
            if reply.stream is not None:
                req = exchange.request
                if req is not None and req.stream:
                    streamed = True
                    status, usage, error_type = await self._stream(request, reply,
                                                                   reply.stream)
                    return
                reply = await self._accumulate(reply.stream, reply)
                status = reply.status
                usage = reply.body.get("usage")
            self._write_json(request, reply.status, reply.body, reply.headers)
        except CancelledError:
            status = 499
        except RelayError as e:
            status, error_type = e.status, e.type
            self._write_error(request, e, rid)
        except Exception:
            status, error_type = 500, "api_error"
            log.failure("unhandled error serving request {request_id}", request_id=rid)
            self._write_error(request, api_error(f"internal relay error (request {rid})"), rid)
        finally:
            if self.access_log:
                self._log(request, rid, exchange, status, streamed, started)
            if self.metrics is not None:
                self.metrics.observe(
                    operation=op, status=status,
                    route=exchange.route if exchange is not None else None,
                    client=exchange.client if exchange is not None else None,
                    seconds=time.monotonic() - started, stream=streamed, usage=usage,
                    error_type=error_type)

    def _exchange(
        self, request: Request, rid: str, op: Operation, model_id: str | None
    ) -> Exchange:
        raw = b""
        if op in ("messages", "count_tokens"):
            raw = cast(io.BytesIO, request.content).getvalue()
        return Exchange(op, _headers(request), rid, raw_body=raw, query=_query(request),
                        model_id=model_id)

    async def _stream(
        self, request: Request, reply: Reply, stream: EventStream
    ) -> tuple[int, dict[str, Any] | None, str | None]:
        """Relay ``stream``; the status to log, the final usage, and the error type."""
        request.setResponseCode(reply.status)
        for name, value in _SSE_HEADERS:
            request.setHeader(name, value)
        for hname, hvalue in redact_headers(reply.headers):
            request.setHeader(hname.encode("latin-1"), hvalue.encode("latin-1"))
        writer = SSEWriter(request, stream, self.reactor, self.ping_interval, self.on_event)
        if self.metrics is not None:
            self.metrics.streams.inc()
        try:
            writer.start()
            await writer.done
        except CancelledError:
            writer.stopProducing()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.streams.dec()
        if writer.client_gone:
            return 499, writer.usage, None
        if writer.error is not None:
            return writer.error.status, writer.usage, writer.error.type
        return reply.status, writer.usage, None

    async def _accumulate(self, stream: EventStream, reply: Reply) -> Reply:
        sink = _FoldingSink()
        try:
            stream.start(sink)
            await sink.done
        except CancelledError:
            stream.stop()
            raise
        if sink.error is not None:
            raise sink.error
        return Reply(status=reply.status, body=sink.accumulator.result(), headers=reply.headers)

    def _write_json(
        self, request: Request, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> None:
        if request.finished or request._disconnected:
            return
        data = dumps(body)
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON)
        for name, value in redact_headers(headers):
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setHeader(b"content-length", str(len(data)).encode("ascii"))
        request.write(data)
        request.finish()

    def _write_error(self, request: Request, error: RelayError, rid: str) -> None:
        if request.startedWriting:
            return
        error = redact_error(error)  # no configured secret reaches a client (issue 8.5)
        self._write_json(request, error.status, error.body(rid), list(error.headers))

    def _log(
        self, request: Request, rid: str, exchange: Exchange | None, status: int,
        streamed: bool, started: float,
    ) -> None:
        route = exchange.route if exchange is not None else None
        log.info(
            "{method} {path} {status} {duration_ms:.1f}ms request_id={request_id} "
            "client={client} model={model} provider={provider} stream={stream}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=status,
            duration_ms=(time.monotonic() - started) * 1000,
            request_id=rid,
            client=exchange.client if exchange is not None else None,
            model=route.requested if route else None,
            provider=route.provider if route else None,
            stream=streamed,
        )


def models_page(catalog: ModelCatalog, query: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/models`` with ``limit``/``after_id``/``before_id`` paging."""
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise invalid_request(f"limit: expected an integer, got {raw_limit!r}") from None
    if not 1 <= limit <= 1000:
        raise invalid_request("limit: must be between 1 and 1000")
    models = catalog.listed()
    ids = [m["id"] for m in models]
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise invalid_request("give at most one of after_id and before_id")
    if after is not None:
        if after not in ids:
            raise invalid_request(f"after_id: unknown model id {after!r}")
        start = ids.index(after) + 1
        page = models[start:start + limit]
        has_more = start + limit < len(models)
    elif before is not None:
        if before not in ids:
            raise invalid_request(f"before_id: unknown model id {before!r}")
        end = ids.index(before)
        page = models[max(0, end - limit):end]
        has_more = end - limit > 0
    else:
        page = models[:limit]
        has_more = limit < len(models)
    return {
        "data": page,
        "has_more": has_more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def catalog_terminal(catalog: ModelCatalog) -> Proceed:
    """The end of the chain: answers the models endpoints; anything else is a stage bug."""

    async def terminal(exchange: Exchange) -> Reply:
        if exchange.operation == "models.list":
            return Reply.json(models_page(catalog, dict(exchange.query)))
        if exchange.operation == "models.get":
            assert exchange.model_id is not None
            found = catalog.get(exchange.model_id)
            if found is None:
                raise not_found(f"model: {exchange.model_id!r} is not served by this relay")
            return Reply.json(found)
        raise api_error("the pipeline ended without an answer: is 'translate' configured?")

    return terminal
