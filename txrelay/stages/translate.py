# -*- test-case-name: tests.test_stages -*-
"""The ``translate`` stage: hands a routed exchange to its provider's backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import api_error


@attrs.frozen
class TranslateStage:
    """Serves ``messages`` and ``count_tokens`` from the routed provider's backend."""

    backends: Mapping[str, Any]

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
        backend = self.backends.get(route.provider)
        if backend is None:
            raise api_error(f"provider {route.provider!r} is not configured")
        if exchange.operation == "count_tokens":
            return Reply.json({"input_tokens": await backend.count_tokens(exchange)})
        answer: Reply = await backend.messages(exchange)
        return answer
