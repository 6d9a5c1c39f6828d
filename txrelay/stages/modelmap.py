# -*- test-case-name: tests.test_catalog_and_stages -*-
"""The ``model-map`` stage: routes the requested model to a provider and upstream model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from txrelay.catalog import ModelCatalog
from txrelay.pipeline import Exchange, Proceed, Reply

if TYPE_CHECKING:
    from txrelay.interfaces import StageServices


@attrs.frozen
class ModelMapOptions:
    """Options of the ``model-map`` stage."""

    #: A model id (or alias) that serves any name nothing else matches.
    default: str | None = None


@attrs.frozen
class ModelMapStage:
    """Sets ``exchange.route``; an unknown model is a 404 listing what is served."""

    catalog: ModelCatalog
    default: str | None = None

    async def __call__(self, exchange: Exchange, proceed: Proceed) -> Reply:
        if exchange.operation in ("messages", "count_tokens"):
            name = exchange.require_request().model
            route = self.catalog.resolve(name)
            if route is None and self.default is not None:
                fallback = self.catalog.resolve(self.default)
                if fallback is not None:
                    route = attrs.evolve(fallback, requested=name)
            if route is None:
                raise self.catalog.unknown_model(name)
            exchange.route = route
        return await proceed(exchange)


def build_model_map(options: ModelMapOptions, services: StageServices) -> ModelMapStage:
    """The ``model-map`` stage; ``ValueError`` when ``default`` names no served model."""
    if options.default is not None and services.catalog.resolve(options.default) is None:
        raise ValueError(f"default: no model named {options.default!r}")
    return ModelMapStage(services.catalog, options.default)
