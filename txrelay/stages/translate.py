# -*- test-case-name: tests.test_capabilities,tests.routing.test_router -*-
"""
The ``translate`` stage: checks a routed exchange against its model's capabilities and hands
it to its provider's backend; with a :class:`~txrelay.routing.router.Router`, target after
target (fallbacks, retries, breakers, key pools and cache affinity).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from txrelay.capabilities import apply_capabilities, capabilities_of
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol import events as ev
from txrelay.protocol.errors import RelayError, api_error
from txrelay.protocol.events import Event
from txrelay.protocol.ids import message_id
from txrelay.protocol.tokens import estimate_input_tokens
from txrelay.routing.router import Router, Unfit, build_router
from txrelay.streams import stream_of

if TYPE_CHECKING:
    from txrelay.interfaces import StageServices


def check_capabilities(exchange: Exchange) -> None:
    """
    Refuse (400) what the routed model cannot take and map what it takes differently
    (:func:`~txrelay.capabilities.apply_capabilities`), for ``messages`` and
    ``count_tokens`` alike; the body is replaced only when something changed.
    """
    route = exchange.route
    assert route is not None
    req = exchange.require_request()
    checked = apply_capabilities(req, capabilities_of(route), model=route.requested,
                                 upstream_model=route.upstream_model)
    if checked is not req:
        exchange.request = checked


@attrs.frozen
class TranslateStage:
    """Serves ``messages`` and ``count_tokens`` from the routed provider's backend."""

    backends: Mapping[str, Any]
    #: Serves ``messages`` from the route's targets; without one, from the routed provider.
    router: Router | None = None

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation not in ("messages", "count_tokens"):
            # A backend that serves the models list itself (models_from_upstream).
            upstream = next((b for b in self.backends.values()
                             if getattr(b, "serves_models", False)), None)
            if upstream is not None:
                reply: Reply = await upstream.models(exchange)
                return reply
            return await proceed(exchange)
        route = exchange.route
        if route is None:
            raise api_error("no route for this request: the pipeline needs a 'model-map' stage")
        if self.router is not None and exchange.operation == "messages":
            return await self.router.serve(exchange, _Attempts(exchange))
        backend = self.backends.get(route.provider)
        if backend is None:
            raise api_error(f"provider {route.provider!r} is not configured")
        check_capabilities(exchange)
        if exchange.operation == "count_tokens":
            return Reply.json({"input_tokens": await backend.count_tokens(exchange)})
        return await _messages(exchange, backend)


async def _messages(exchange: Exchange, backend: Any) -> Reply:
    """``messages`` from ``backend`` (capabilities already checked)."""
    route = exchange.route
    assert route is not None
    req = exchange.require_request()
    if req.max_tokens == 0 and not getattr(backend, "serves_zero_max_tokens", False):
        # max_tokens 0 pre-warms Anthropic's prompt cache and generates nothing; a
        # backend without that cache is not called at all (mapping.md R-O1).
        return Reply(stream=stream_of(empty_message(route.requested,
                                                    estimate_input_tokens(req))))
    answer: Reply = await backend.messages(exchange)
    return answer


@attrs.define(eq=False)
class _Attempts:
    """
    One attempt per call, for :meth:`Router.serve`: each target's capabilities are checked
    on the request as it came to this stage (an earlier target's mapping undone), and a
    refusal lets the router try the next target.
    """

    exchange: Exchange
    _body: bytes = attrs.field(init=False)
    _changed: bool = False

    def __attrs_post_init__(self) -> None:
        self.exchange.require_request()  # a malformed body is a 400 before any attempt
        self._body = self.exchange.raw_body

    async def __call__(self, exchange: Exchange, backend: Any) -> Reply:
        if self._changed:
            exchange.raw_body = self._body
        before = exchange.require_request()
        try:
            check_capabilities(exchange)
        except RelayError as e:
            if e.status != 400:
                raise
            raise Unfit(e) from None
        self._changed = exchange.require_request() is not before
        return await _messages(exchange, backend)


def empty_message(model: str, input_tokens: int) -> list[Event]:
    """The answer to ``max_tokens: 0``: no content, ``stop_reason: max_tokens``."""
    return [
        ev.message_start(message_id(), model, ev.empty_usage(input_tokens)),
        ev.message_delta("max_tokens", None, {"input_tokens": input_tokens,
                                              "output_tokens": 0}),
        ev.message_stop(),
    ]


def build_translate(options: None, services: StageServices) -> TranslateStage:
    """The ``translate`` stage over the configured backends and their router."""
    return TranslateStage(services.backends, build_router(services))
