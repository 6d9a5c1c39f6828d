"""The built-in stages, found through Twisted's plugin system like any operator's stage."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import IStageFactory, StageServices
from txrelay.stages.auth import AuthOptions, build_auth
from txrelay.stages.identity import IdentityGuardStage, IdentityOptions
from txrelay.stages.limits import LimitsOptions, build_limits
from txrelay.stages.modelmap import ModelMapOptions, ModelMapStage
from txrelay.stages.toolhygiene import ToolHygieneOptions, ToolHygieneStage
from txrelay.stages.toolintercept.stage import ToolInterceptOptions, build_tool_intercept
from txrelay.stages.translate import TranslateStage


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _Auth:
    type_name: str = "auth"
    options_type: type = AuthOptions

    def build(self, options: AuthOptions, services: StageServices) -> Any:
        return build_auth(options, services)


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _ModelMap:
    type_name: str = "model-map"
    options_type: type = ModelMapOptions

    def build(self, options: ModelMapOptions, services: StageServices) -> Any:
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

        return TranslateStage(services.backends, build_router(services))


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _ToolHygiene:
    type_name: str = "tool-hygiene"
    options_type: type = ToolHygieneOptions

    def build(self, options: ToolHygieneOptions, services: StageServices) -> Any:
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
    options_type: type = ToolInterceptOptions

    def build(self, options: ToolInterceptOptions, services: StageServices) -> Any:
        return build_tool_intercept(options, services)


tool_intercept = _ToolIntercept()


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _IdentityGuard:
    type_name: str = "identity-guard"
    options_type: type = IdentityOptions

    def build(self, options: IdentityOptions, services: StageServices) -> Any:
        return IdentityGuardStage.build(options, services.catalog)


identity_guard = _IdentityGuard()


@implementer(IPlugin, IStageFactory)
@attrs.frozen
class _Limits:
    type_name: str = "limits"
    options_type: type = LimitsOptions

    def build(self, options: LimitsOptions, services: StageServices) -> Any:
        return build_limits(options, services)


limits = _Limits()
