# -*- test-case-name: tests.test_lazyplugin -*-
"""
Plugin factories that import their module only when a configuration uses them.

Twisted's plugin system imports every module in ``txrelay/plugins/`` to list what is there,
so a plugin module that imported its implementation would load every backend and stage into
every relay, used or not. :class:`LazyBackendFactory` and :class:`LazyStageFactory` name
their implementation instead, as ``"package.module:attribute"`` references, and import it
the first time the options type is read or the factory builds (which happens only for the
kinds and stages a configuration names)::

    openai_chat = LazyBackendFactory(
        kind="openai-chat",
        options="txrelay.upstream.openai:OpenAIChatOptions",
        model_options="txrelay.upstream.openai:OpenAIChatModelOptions",
        builder="txrelay.upstream.openai:build_openai_backend",
    )

An operator's plugin may use them too, or provide the interfaces any other way.
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import (
    BackendContext,
    IBackend,
    IBackendFactory,
    IStage,
    IStageFactory,
    StageServices,
)


def _is_ref(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (value.count(":") != 1 or value.startswith(":")
                              or value.endswith(":")):
        raise ValueError(f"{attribute.name}: {value!r} is not 'package.module:attribute'")


def resolve(ref: str) -> Any:
    """The attribute a ``"package.module:attribute"`` reference names, importing its module."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _resolve_optional(ref: str | None) -> Any:
    return None if ref is None else resolve(ref)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class LazyBackendFactory:
    """
    An :class:`~txrelay.interfaces.IBackendFactory` whose module is imported on first use.

    :ivar builder: a reference to ``build(options, context) -> IBackend | None``.
    :ivar options: a reference to the provider options' attrs class, or None for a kind
        without options.
    :ivar model_options: a reference to the attrs class of each model's ``options``, or None.
    """

    kind: str
    builder: str = attrs.field(validator=_is_ref)
    options: str | None = attrs.field(default=None, validator=_is_ref)
    model_options: str | None = attrs.field(default=None, validator=_is_ref)

    @property
    def options_type(self) -> type | None:
        """The provider options' class (imports its module)."""
        return _resolve_optional(self.options)  # type: ignore[no-any-return]

    @property
    def model_options_type(self) -> type | None:
        """The model options' class (imports its module)."""
        return _resolve_optional(self.model_options)  # type: ignore[no-any-return]

    def build(self, options: Any, context: BackendContext) -> IBackend | None:
        """Build the backend with the referenced builder (imports its module)."""
        return resolve(self.builder)(options, context)  # type: ignore[no-any-return]


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class LazyStageFactory:
    """
    An :class:`~txrelay.interfaces.IStageFactory` whose module is imported on first use.

    :ivar builder: a reference to ``build(options, services) -> IStage``.
    :ivar options: a reference to the stage options' attrs class, or None for a stage
        without options.
    """

    type_name: str
    builder: str = attrs.field(validator=_is_ref)
    options: str | None = attrs.field(default=None, validator=_is_ref)

    @property
    def options_type(self) -> type | None:
        """The stage options' class (imports its module)."""
        return _resolve_optional(self.options)  # type: ignore[no-any-return]

    def build(self, options: Any, services: StageServices) -> IStage:
        """Build the stage with the referenced builder (imports its module)."""
        return resolve(self.builder)(options, services)  # type: ignore[no-any-return]
