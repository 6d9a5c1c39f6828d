"""The built-in stages, found through Twisted's plugin system like any operator's stage."""

from __future__ import annotations

from txrelay.lazyplugin import LazyStageFactory

# Each stage's module is imported only when a configuration names the stage, so a relay does
# not load, or hold in memory, stages it does not run.

auth = LazyStageFactory(
    type_name="auth",
    options="txrelay.stages.auth:AuthOptions",
    builder="txrelay.stages.auth:build_auth",
)
model_map = LazyStageFactory(
    type_name="model-map",
    options="txrelay.stages.modelmap:ModelMapOptions",
    builder="txrelay.stages.modelmap:build_model_map",
)
translate = LazyStageFactory(
    type_name="translate",
    builder="txrelay.stages.translate:build_translate",
)
tool_hygiene = LazyStageFactory(
    type_name="tool-hygiene",
    options="txrelay.stages.toolhygiene:ToolHygieneOptions",
    builder="txrelay.stages.toolhygiene:build_tool_hygiene",
)
tool_intercept = LazyStageFactory(
    type_name="tool-intercept",
    options="txrelay.stages.toolintercept.stage:ToolInterceptOptions",
    builder="txrelay.stages.toolintercept.stage:build_tool_intercept",
)
identity_guard = LazyStageFactory(
    type_name="identity-guard",
    options="txrelay.stages.identity:IdentityOptions",
    builder="txrelay.stages.identity:build_identity_guard",
)
limits = LazyStageFactory(
    type_name="limits",
    options="txrelay.stages.limits:LimitsOptions",
    builder="txrelay.stages.limits:build_limits",
)
