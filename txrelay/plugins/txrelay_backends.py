"""The built-in backend kinds, found through Twisted's plugin system like any third party's."""

from __future__ import annotations

from txrelay.lazyplugin import LazyBackendFactory

# Each backend's module is imported only when a configuration names its kind, so a relay does
# not load, or hold in memory, backends (Gemini, Vertex auth, ...) it does not use.

demo = LazyBackendFactory(
    kind="demo",
    options="txrelay.upstream.demo:DemoOptions",
    builder="txrelay.upstream.demo:build_demo_backend",
)
openai_chat = LazyBackendFactory(
    kind="openai-chat",
    options="txrelay.upstream.openai:OpenAIChatOptions",
    model_options="txrelay.upstream.openai:OpenAIChatModelOptions",
    builder="txrelay.upstream.openai:build_openai_backend",
)
anthropic = LazyBackendFactory(
    kind="anthropic",
    options="txrelay.upstream.anthropic:AnthropicOptions",
    builder="txrelay.upstream.anthropic:build_anthropic_backend",
)
gemini = LazyBackendFactory(
    kind="gemini",
    options="txrelay.upstream.gemini:GeminiOptions",
    model_options="txrelay.upstream.gemini:GeminiModelOptions",
    builder="txrelay.upstream.gemini:build_gemini_backend",
)
