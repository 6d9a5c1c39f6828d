# -*- test-case-name: tests.test_catalog_and_stages -*-
"""
The model catalogue: which names clients may ask for and where each one is served.

Resolution order: exact id, alias, ``provider/model`` prefix, glob patterns in file order,
then the optional default. The route keeps the name the client asked for, which the response
echoes (R-X5).
"""

from __future__ import annotations

from typing import Any

import attrs

from txrelay.capabilities import (
    capabilities_of,
    model_capabilities,
    model_object_capabilities,
)
from txrelay.config import (
    ModelConfig,
    RelayConfig,
    glob_matches,
    model_targets,
    target_name,
)
from txrelay.protocol.errors import RelayError, not_found
from txrelay.routing.policy import Attempt, Target


@attrs.frozen
class Route:
    """
    Where one request goes: the target being tried (``provider``, ``upstream_model``) and,
    for a model with several, all of its ``targets`` (README "Routes, fallbacks and key
    pools"); after the translate stage, the target that served it and the attempts made.
    """

    #: The model name the client asked for (echoed in ``message.model``).
    requested: str
    provider: str
    upstream_model: str
    model: ModelConfig | None
    #: Every place the model is served (one for a single-provider model).
    targets: tuple[Target, ...] = ()
    #: The name of the target ``provider``/``upstream_model`` belong to.
    target: str | None = None
    #: The upstream attempts made for this request, in order.
    attempts: tuple[Attempt, ...] = ()

    def for_target(self, target: Target) -> Route:
        """This route sent to ``target``."""
        # (a constructor call: attrs.evolve introspects the class on every call)
        return Route(requested=self.requested, provider=target.provider,
                     upstream_model=target.upstream_model, model=self.model,
                     targets=self.targets, target=target.name, attempts=self.attempts)


def _route(name: str, model: ModelConfig, asked: str | None = None) -> Route:
    """The route of ``model`` for the asked ``name`` (``asked``: a pattern's upstream name)."""
    targets = tuple(
        Target(target_name(model, t), t.provider,
               t.upstream_model or model.upstream_model or asked or model.id,
               t.priority, t.weight)
        for t in model_targets(model))
    first = min(targets, key=lambda t: t.priority)
    return Route(name, first.provider, first.upstream_model, model, targets, first.name)


@attrs.frozen
class ModelCatalog:
    """Resolves requested model names to routes."""

    models: tuple[ModelConfig, ...]
    providers: frozenset[str]
    _by_name: dict[str, ModelConfig] = attrs.field(init=False)

    @_by_name.default
    def _index(self) -> dict[str, ModelConfig]:
        out: dict[str, ModelConfig] = {}
        for m in self.models:
            out.setdefault(m.id, m)
            for alias in m.aliases:
                out.setdefault(alias, m)
        return out

    @classmethod
    def from_config(cls, cfg: RelayConfig) -> ModelCatalog:
        """The catalogue of ``cfg``."""
        return cls(cfg.models, frozenset(p.name for p in cfg.providers))

    def resolve(self, name: str) -> Route | None:
        """The route for ``name``, or ``None`` when nothing serves it."""
        model = self._by_name.get(name)
        if model is not None:
            return _route(name, model)
        provider, slash, rest = name.partition("/")
        if slash and rest and provider in self.providers:
            for m in self.models:
                if m.provider == provider and rest in (m.id, m.upstream_model):
                    return _route(name, m)
            target = Target(f"{provider}/*", provider, rest)
            return Route(name, provider, rest, None, (target,), target.name)
        for m in self.models:
            for pattern in m.patterns:
                if glob_matches(pattern, name):
                    return _route(name, m, name)
        return None

    def served_names(self) -> list[str]:
        """The names listed in a 404 for an unknown model."""
        names = [m.id for m in self.models]
        names += [a for m in self.models for a in m.aliases]
        names += [p for m in self.models for p in m.patterns]
        return names

    def unknown_model(self, name: str) -> RelayError:
        """The 404 for a name nothing serves, listing what is served."""
        served = ", ".join(self.served_names()) or "none"
        return not_found(f"model: {name!r} is not served by this relay; served models: {served}")

    def listed(self) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries in Anthropic's shape (R-C2)."""
        return [model_object(m, m.id) for m in self.models if m.listed]

    def get(self, name: str) -> dict[str, Any] | None:
        """``GET /v1/models/{id}``: aliases and patterns resolve too."""
        route = self.resolve(name)
        if route is None:
            return None
        if route.model is None:
            return {"type": "model", "id": name, "display_name": name,
                    "created_at": "2025-01-01T00:00:00Z", "lifecycle": "active",
                    "capabilities": model_object_capabilities(capabilities_of(route))}
        shown = name if route.model.patterns and name not in self._by_name else route.model.id
        return model_object(route.model, shown, route.upstream_model)


def model_object(m: ModelConfig, shown_id: str,
                 upstream_model: str | None = None) -> dict[str, Any]:
    """
    One model object (anthropic-messages.md §12), with the limits and ``capabilities`` of
    the model's capability table (the SDK's ``ModelInfo`` fields).
    """
    caps = model_capabilities(m, upstream_model)
    out: dict[str, Any] = {
        "type": "model",
        "id": shown_id,
        "display_name": m.display_name or shown_id,
        "created_at": m.created_at,
        "lifecycle": "active",
    }
    if caps.context_window is not None:
        out["max_input_tokens"] = caps.context_window
    if caps.max_output_tokens is not None:
        out["max_tokens"] = caps.max_output_tokens
    out["capabilities"] = model_object_capabilities(caps)
    return out
