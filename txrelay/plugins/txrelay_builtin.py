"""The built-in stages, found through Twisted's plugin system like any operator's stage."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import IStageFactory, StageServices

# Each stage's module is imported only when a configuration names the stage (``options_type``
# is read only then), so a relay does not load, or hold in memory, stages it does not run.


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _Auth:
    type_name: str = "auth"

    @property
    def options_type(self) -> type:
        from txrelay.stages.auth import AuthOptions

        return AuthOptions

    def build(self, options: Any, services: StageServices) -> Any:
        from txrelay.stages.auth import build_auth

        return build_auth(options, services)


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _ModelMap:
    type_name: str = "model-map"

    @property
    def options_type(self) -> type:
        from txrelay.stages.modelmap import ModelMapOptions

        return ModelMapOptions

    def build(self, options: Any, services: StageServices) -> Any:
        from txrelay.stages.modelmap import ModelMapStage

        if options.default is not None and services.catalog.resolve(options.default) is None:
            raise ValueError(f"default: no model named {options.default!r}")
        return ModelMapStage(services.catalog, options.default)


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _Translate:
    type_name: str = "translate"
    options_type: None = None

    def build(self, options: None, services: StageServices) -> Any:
        from txrelay.routing.router import build_router
        from txrelay.stages.translate import TranslateStage

        return TranslateStage(services.backends, build_router(services))


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _ToolHygiene:
    type_name: str = "tool-hygiene"

    @property
    def options_type(self) -> type:
        from txrelay.stages.toolhygiene import ToolHygieneOptions

        return ToolHygieneOptions

    def build(self, options: Any, services: StageServices) -> Any:
        from txrelay.stages.toolhygiene import ToolHygieneStage

        if not options.formats and not options.fix_ids and not options.repair_history:
            raise ValueError("formats, fix_ids and repair_history: nothing left to do")
        return ToolHygieneStage(options)


auth = _Auth()
model_map = _ModelMap()
translate = _Translate()
tool_hygiene = _ToolHygiene()


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _ToolIntercept:
    type_name: str = "tool-intercept"

    @property
    def options_type(self) -> type:
        from txrelay.stages.toolintercept.stage import ToolInterceptOptions

        return ToolInterceptOptions

    def build(self, options: Any, services: StageServices) -> Any:
        from txrelay.stages.toolintercept.stage import build_tool_intercept

        return build_tool_intercept(options, services)


tool_intercept = _ToolIntercept()


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _IdentityGuard:
    type_name: str = "identity-guard"

    @property
    def options_type(self) -> type:
        from txrelay.stages.identity import IdentityOptions

        return IdentityOptions

    def build(self, options: Any, services: StageServices) -> Any:
        from txrelay.stages.identity import IdentityGuardStage

        return IdentityGuardStage.build(options, services.catalog)


identity_guard = _IdentityGuard()


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _Limits:
    type_name: str = "limits"

    @property
    def options_type(self) -> type:
        from txrelay.stages.limits import LimitsOptions

        return LimitsOptions

    def build(self, options: Any, services: StageServices) -> Any:
        from txrelay.stages.limits import build_limits

        return build_limits(options, services)


limits = _Limits()
