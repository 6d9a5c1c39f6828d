"""The built-in backend kinds, found through Twisted's plugin system like any third party's."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txrelay.interfaces import BackendContext, IBackendFactory
from txrelay.upstream.anthropic import AnthropicOptions, build_anthropic_backend
from txrelay.upstream.demo import DemoBackend, DemoOptions
from txrelay.upstream.gemini import GeminiModelOptions, GeminiOptions, build_gemini_backend
from txrelay.upstream.openai import (
    OpenAIChatModelOptions,
    OpenAIChatOptions,
    build_openai_backend,
)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _Demo:
    kind: str = "demo"
    options_type: type = DemoOptions
    model_options_type: None = None

    def build(self, options: DemoOptions, context: BackendContext) -> Any:
        return DemoBackend(context.reactor, options)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _OpenAIChat:
    kind: str = "openai-chat"
    options_type: type = OpenAIChatOptions
    model_options_type: type = OpenAIChatModelOptions

    def build(self, options: Any, context: BackendContext) -> Any:
        return build_openai_backend(options, context)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _Anthropic:
    kind: str = "anthropic"
    options_type: type = AnthropicOptions
    model_options_type: None = None

    def build(self, options: AnthropicOptions, context: BackendContext) -> Any:
        return build_anthropic_backend(options, context)


@implementer(IPlugin, IBackendFactory)
@attrs.frozen
class _Gemini:
    kind: str = "gemini"
    options_type: type = GeminiOptions
    model_options_type: type = GeminiModelOptions

    def build(self, options: GeminiOptions, context: BackendContext) -> Any:
        return build_gemini_backend(options, context)


demo = _Demo()
anthropic = _Anthropic()
openai_chat = _OpenAIChat()
gemini = _Gemini()
