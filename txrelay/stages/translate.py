# -*- test-case-name: tests.test_stages -*-
"""
The ``translate`` stage: checks a routed exchange against its model's capabilities and hands
it to its provider's backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from txrelay.capabilities import apply_capabilities, capabilities_of
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import api_error


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

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation not in ("messages", "count_tokens"):
            return await proceed(exchange)
        route = exchange.route
        if route is None:
            raise api_error("no route for this request: the pipeline needs a 'model-map' stage")
        backend = self.backends.get(route.provider)
        if backend is None:
            raise api_error(f"provider {route.provider!r} is not configured")
        check_capabilities(exchange)
        if exchange.operation == "count_tokens":
            return Reply.json({"input_tokens": await backend.count_tokens(exchange)})
        reply: Reply = await backend.messages(exchange)
        return reply
