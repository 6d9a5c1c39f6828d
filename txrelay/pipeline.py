# -*- test-case-name: tests.test_pipeline -*-
"""
Exchanges, replies and the stage chain every request runs through.

A stage is middleware with a continuation: ``async def stage(exchange, proceed) -> Reply``.
It may change the exchange before calling ``proceed``, answer without calling it, call it more
than once, or wrap the reply's event stream with a filter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import attrs

from txrelay.catalog import Route
from txrelay.protocol.anthropic import MessagesRequest, parse_request
from txrelay.protocol.errors import RelayError
from txrelay.streams import EventStream

Operation = Literal["messages", "count_tokens", "models.list", "models.get"]


@attrs.define(eq=False)
class Exchange:
    """
    One client request on its way through the pipeline.

    :ivar operation: what the client asked for.
    :ivar request: the parsed body (``messages`` and ``count_tokens`` only), parsed on first
        use so that stages before it (``auth``) answer without reading the body; a malformed
        body raises a 400 :class:`RelayError` from there.
    :ivar headers: request headers, names lower-cased, repeated values joined with ``", "``.
    :ivar request_id: the ``request-id`` sent back to the client.
    :ivar client: the name of the authenticated key (set by the ``auth`` stage).
    :ivar route: where the request goes (set by the ``model-map`` stage).
    :ivar state: free-form per-request data stages share.
    """

    operation: Operation
    headers: Mapping[str, str]
    request_id: str
    raw_body: bytes = b""
    _parsed: MessagesRequest | None = attrs.field(default=None, alias="parsed")
    query: Mapping[str, str] = attrs.Factory(dict)
    model_id: str | None = None
    client: str | None = None
    route: Route | None = None
    state: dict[str, Any] = attrs.Factory(dict)

    @property
    def request(self) -> MessagesRequest | None:
        """The parsed request body, or ``None`` for operations without one."""
        if self._parsed is None and self.operation in ("messages", "count_tokens"):
            self._parsed = parse_request(
                self.raw_body, count_tokens=self.operation == "count_tokens"
            )
        return self._parsed

    @request.setter
    def request(self, value: MessagesRequest) -> None:
        self._parsed = value

    def require_request(self) -> MessagesRequest:
        """The parsed request; a stage bug if absent."""
        req = self.request
        if req is None:
            raise RelayError("api_error", f"{self.operation} has no request body")
        return req


@attrs.define(eq=False)
class Reply:
    """
    What the pipeline answers: a JSON body or an event stream.

    A ``stream`` is delivered as SSE to a streaming client and folded into one message for
    a non-streaming one.
    """

    status: int = 200
    body: Any = None
    stream: EventStream | None = None
    headers: list[tuple[str, str]] = attrs.Factory(list)

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Reply:
        """A JSON reply."""
        return cls(status=status, body=body)


Proceed = Callable[[Exchange], Awaitable[Reply]]
Stage = Callable[[Exchange, Proceed], Awaitable[Reply]]


def compose(stages: Sequence[Stage], terminal: Proceed) -> Proceed:
    """The chain ``stages[0] → stages[1] → … → terminal`` as one callable."""
    proceed = terminal
    for stage in reversed(stages):
        proceed = _bind(stage, proceed)
    return proceed


def _bind(stage: Stage, proceed: Proceed) -> Proceed:
    async def call(exchange: Exchange) -> Reply:
        return await stage(exchange, proceed)

    return call
