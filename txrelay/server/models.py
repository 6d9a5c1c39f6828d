# -*- test-case-name: tests.server.test_resource -*-
"""The models API: ``GET /v1/models`` (paged) and ``GET /v1/models/{id}``, the chain's end."""

from __future__ import annotations

from typing import Any

from txrelay.catalog import ModelCatalog
from txrelay.pipeline import Exchange, Proceed, Reply
from txrelay.protocol.errors import api_error, invalid_request, not_found


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
