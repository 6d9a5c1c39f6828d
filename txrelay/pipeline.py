# -*- test-case-name: tests.test_pipeline -*-
"""
Exchanges, replies and the stage chain every request runs through.

A stage is middleware with a continuation: ``async def stage(exchange, proceed) -> Reply``.
It may change the exchange before calling ``proceed``, answer without calling it, call it more
than once, or put a filter on the reply's event stream (:meth:`Reply.with_filter`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import cattrs
from twisted.internet.defer import CancelledError
from twisted.logger import LogLevel

from txrelay import tracing
from txrelay.catalog import Route
from txrelay.logs import RelayLogger
from txrelay.protocol.anthropic import MessagesRequest, parse_request
from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.jsoncodec import dumps
from txrelay.streams import EndHook, EventStream, StageContext, StreamFilter, current_stage

log = RelayLogger()

Operation = Literal["messages", "count_tokens", "models.list", "models.get"]


_unstructure = cattrs.Converter().unstructure


def request_body(request: MessagesRequest) -> bytes:
    """``request`` as a JSON body: its fields (absent ones left out) plus ``extra``."""
    body: dict[str, Any] = {k: v for k, v in _unstructure(request).items()
                            if v is not None and k != "extra"}
    body.update(request.extra)
    return dumps(body)


@attrs.define(eq=False)
class Exchange:
    """
    One client request on its way through the pipeline.

    The body has one source of truth: :attr:`request` and :attr:`raw_body` always describe
    the same request. Until a stage replaces one of them, ``raw_body`` is the client's bytes
    and ``request`` is parsed from them on first use. Setting ``request`` makes ``raw_body``
    its serialisation (derived lazily, once); setting ``raw_body`` makes ``request`` be
    parsed again from the new bytes. :attr:`original_body` is always what the client sent.

    :ivar operation: what the client asked for.
    :ivar headers: request headers, names lower-cased, repeated values joined with ``", "``.
    :ivar request_id: the ``request-id`` sent back to the client.
    :ivar client: the name of the authenticated key (set by the ``auth`` stage).
    :ivar route: where the request goes (set by the ``model-map`` stage).
    :ivar state: free-form per-request data stages share.
    """

    operation: Operation
    headers: Mapping[str, str]
    request_id: str
    _original: bytes = attrs.field(default=b"", alias="raw_body")
    _parsed: MessagesRequest | None = attrs.field(default=None, alias="parsed")
    query: Mapping[str, str] = attrs.Factory(dict)
    model_id: str | None = None
    client: str | None = None
    route: Route | None = None
    state: dict[str, Any] = attrs.Factory(dict)
    #: The current body when it is not the original: set, or derived from a new request.
    _body: bytes | None = attrs.field(default=None, init=False)
    #: Whether ``_parsed`` replaced the body (so ``_body`` is derived from it).
    _replaced: bool = attrs.field(default=False, init=False)

    @property
    def request(self) -> MessagesRequest | None:
        """
        The parsed request body, or ``None`` for operations without one; parsed on first use
        so that stages before it (``auth``) answer without reading the body. A malformed
        body raises a 400 :class:`RelayError` from here.
        """
        if self._parsed is None and self.operation in ("messages", "count_tokens"):
            self._parsed = parse_request(
                self.raw_body, count_tokens=self.operation == "count_tokens"
            )
        return self._parsed

    @request.setter
    def request(self, value: MessagesRequest) -> None:
        self._parsed = value
        self._replaced = True
        self._body = None

    @property
    def parsed_request(self) -> MessagesRequest | None:
        """The request if it was parsed already, else ``None``: never parses the body (for
        observers that must not read an unauthenticated body)."""
        return self._parsed

    @property
    def raw_body(self) -> bytes:
        """The body bytes of :attr:`request`: the client's, until a stage replaced it."""
        if self._replaced:
            if self._body is None:
                assert self._parsed is not None
                self._body = request_body(self._parsed)
            return self._body
        return self._original if self._body is None else self._body

    @raw_body.setter
    def raw_body(self, value: bytes) -> None:
        self._body = value
        self._parsed = None
        self._replaced = False

    @property
    def original_body(self) -> bytes:
        """The body exactly as the client sent it."""
        return self._original

    @property
    def body_replaced(self) -> bool:
        """Whether a stage replaced the body (so :attr:`raw_body` is not the client's)."""
        return self._replaced or self._body is not None

    def require_request(self) -> MessagesRequest:
        """The parsed request; a stage bug if absent."""
        req = self.request
        if req is None:
            raise RelayError("api_error", f"{self.operation} has no request body")
        return req

    def with_request(self, request: MessagesRequest) -> Exchange:
        """
        A copy of this exchange carrying ``request`` (for a stage that calls ``proceed``
        more than once); ``state`` and ``headers`` are copied, so the calls do not share
        changes later stages make to them.
        """
        copy = attrs.evolve(self, raw_body=self._original, parsed=None,
                            headers=dict(self.headers), state=dict(self.state))
        copy.request = request
        return copy


@attrs.define(eq=False)
class Reply:
    """
    What the pipeline answers: a JSON body or an event stream.

    A ``stream`` is delivered as SSE to a streaming client and folded into one message for
    a non-streaming one. Prefer the ``with_*`` helpers, which return a new reply and leave
    this one as it was, to assigning fields.
    """

    status: int = 200
    body: Any = None
    stream: EventStream | None = None
    headers: list[tuple[str, str]] = attrs.Factory(list)

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Reply:
        """A JSON reply."""
        return cls(status=status, body=body)

    def evolve(self, **changes: Any) -> Reply:
        """A copy with ``changes`` (its own ``headers`` list)."""
        changes.setdefault("headers", list(self.headers))
        return attrs.evolve(self, **changes)

    def with_stream(self, stream: EventStream) -> Reply:
        """A copy answering ``stream``."""
        return self.evolve(stream=stream)

    def with_filter(self, stream_filter: StreamFilter, *, name: str | None = None) -> Reply:
        """
        A copy whose stream goes through ``stream_filter`` after the existing filters (see
        :meth:`EventStream.through`); a JSON reply is returned as it is.
        """
        if self.stream is None:
            return self
        return self.evolve(stream=self.stream.through(stream_filter, name=name))

    def with_headers(self, *headers: tuple[str, str]) -> Reply:
        """A copy with ``headers`` added."""
        return self.evolve(headers=[*self.headers, *headers])

    def on_end(self, hook: EndHook) -> Reply:
        """
        A copy whose stream calls ``hook`` once when it ends (see :meth:`EventStream.on_end`);
        a JSON reply is returned as it is.
        """
        if self.stream is None:
            return self
        return self.evolve(stream=self.stream.on_end(hook))


Proceed = Callable[[Exchange], Awaitable[Reply]]
Stage = Callable[[Exchange, Proceed], Awaitable[Reply]]


def stage_name(stage: Stage) -> str:
    """A stage's name for logs: its ``name`` attribute, else its function or class name."""
    name = getattr(stage, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(stage, "__name__", type(stage).__name__))


def compose(stages: Sequence[Stage], terminal: Proceed,
            names: Sequence[str] | None = None) -> Proceed:
    """
    The chain ``stages[0] → stages[1] → … → terminal`` as one callable.

    :param names: each stage's name (the config's ``label``); defaults to
        :func:`stage_name`. While a stage runs, :data:`txrelay.streams.current_stage` names
        it, so the filters it adds and the errors it raises are blamed on it.
    """
    if names is not None and len(names) != len(stages):
        raise ValueError(f"{len(names)} names for {len(stages)} stages")
    labels = list(names) if names is not None else [stage_name(s) for s in stages]
    proceed = terminal
    for stage, label in zip(reversed(stages), reversed(labels), strict=True):
        proceed = _bind(stage, label, proceed)
    return proceed


def _bind(stage: Stage, name: str, proceed: Proceed) -> Proceed:
    # Decided when the chain is built: with tracing off a stage call makes no span.
    traced = tracing.active()

    async def call(exchange: Exchange) -> Reply:
        token = current_stage.set(StageContext(name, exchange.request_id))
        try:
            if traced is not None:
                return await _traced(traced, stage, name, exchange, proceed)
            return await stage(exchange, proceed)
        except (RelayError, CancelledError):
            raise
        except Exception as e:
            message = StageContext(name, exchange.request_id).describe_failure(
                "handling the request")
            log.failure("{message}", level=LogLevel.error, message=message, stage=name,
                        request_id=exchange.request_id)
            raise api_error(message) from e
        finally:
            current_stage.reset(token)

    return call


async def _traced(traced: tracing.Tracing, stage: Stage, name: str, exchange: Exchange,
                  proceed: Proceed) -> Reply:
    """Run ``stage`` in a span named ``name``; it ends when the stage returns or raises."""
    with tracing.internal_span(traced, name) as span:
        try:
            reply = await stage(exchange, proceed)
        except RelayError as e:
            tracing.set_error(span, e.type)
            raise
        except CancelledError:
            span.set_attribute("txrelay.cancelled", True)
            raise
        except Exception as e:
            tracing.set_error(span, "api_error", type(e).__name__)
            raise
        span.set_attribute("http.response.status_code", reply.status)
        return reply
