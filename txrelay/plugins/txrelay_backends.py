"""The built-in backend kinds, found through Twisted's plugin system like any third party's."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import BackendContext, IBackendFactory

# Each backend's module is imported only when a configuration names its kind (the option
# types are read only then), so a relay does not load, or hold in memory, backends (Gemini,
# Vertex auth, ...) it does not use.


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _Demo:
    kind: str = "demo"
    model_options_type: None = None

    @property
    def options_type(self) -> type:
        from txrelay.upstream.demo import DemoOptions

        return DemoOptions

    def build(self, options: Any, context: BackendContext) -> Any:
        from txrelay.upstream.demo import DemoBackend

        return DemoBackend(context.reactor, options)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _OpenAIChat:
    kind: str = "openai-chat"

    @property
    def options_type(self) -> Any:
        from txrelay.upstream.openai import OpenAIChatOptions

        return OpenAIChatOptions

    @property
    def model_options_type(self) -> Any:
        from txrelay.upstream.openai import OpenAIChatModelOptions

        return OpenAIChatModelOptions

    def build(self, options: Any, context: BackendContext) -> Any:
        from txrelay.upstream.openai import build_openai_backend

        return build_openai_backend(options, context)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _Anthropic:
    kind: str = "anthropic"
    model_options_type: None = None

    @property
    def options_type(self) -> type:
        from txrelay.upstream.anthropic import AnthropicOptions

        return AnthropicOptions

    def build(self, options: Any, context: BackendContext) -> Any:
        from txrelay.upstream.anthropic import build_anthropic_backend

        return build_anthropic_backend(options, context)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _Gemini:
    kind: str = "gemini"

    @property
    def options_type(self) -> type:
        from txrelay.upstream.gemini import GeminiOptions

        return GeminiOptions

    @property
    def model_options_type(self) -> type:
        from txrelay.upstream.gemini import GeminiModelOptions

        return GeminiModelOptions

    def build(self, options: Any, context: BackendContext) -> Any:
        from txrelay.upstream.gemini import build_gemini_backend

        return build_gemini_backend(options, context)


demo = _Demo()
anthropic = _Anthropic()
openai_chat = _OpenAIChat()
gemini = _Gemini()
