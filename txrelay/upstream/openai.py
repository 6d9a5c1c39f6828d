# -*- test-case-name: tests.integration.test_openai_backend -*-
"""
The ``openai-chat`` backend kind: any OpenAI-compatible Chat Completions server.

Only the sans-IO codec lives here: the request is translated by
:mod:`txrelay.protocol.openai.request`, streamed answers by
:class:`~txrelay.protocol.openai.stream.ChatStreamTranslator`, errors by
:mod:`txrelay.protocol.openai.errors`; sending, committing and timeouts are the generic
:class:`~txrelay.upstream.httpbackend.HTTPBackend`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from txrelay.capabilities import capabilities_of
from txrelay.catalog import Route
from txrelay.interfaces import BackendContext
from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.ids import message_id
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps, loads
from txrelay.protocol.openai.dialect import PRESETS, OpenAIDialect
from txrelay.protocol.openai.errors import upstream_error
from txrelay.protocol.openai.request import ToolNameMap, build_chat_request
from txrelay.protocol.openai.response import chat_response_events
from txrelay.protocol.openai.stream import ChatStreamTranslator
from txrelay.protocol.translator import StreamTranslator
from txrelay.routing.keys import KeyPool
from txrelay.upstream.codec import BearerAuth, UpstreamRequest
from txrelay.upstream.httpbackend import HTTPBackend, http_backend

_DIALECT_FIELDS = tuple(f.name for f in attrs.fields(attrs.resolve_types(OpenAIDialect)))


def _options_class(name: str, doc: str, extra: dict[str, Any]) -> Any:
    """An options class: a preset name plus every dialect field as an optional override."""
    these: dict[str, Any] = {"dialect": attrs.field(default=None, type=str | None)}  # type: ignore[arg-type]
    these.update(extra)
    for f in attrs.fields(OpenAIDialect):
        optional: Any = f.type | None  # type: ignore[operator]
        these[f.name] = attrs.field(default=None, type=optional)
    cls = attrs.make_class(name, these, frozen=True)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


#: A provider's ``options``: ``dialect`` (a preset), ``chat_path``, and dialect overrides.
OpenAIChatOptions: Any = _options_class(
    "OpenAIChatOptions",
    "Options of an ``openai-chat`` provider: a dialect preset, overrides, the chat path.",
    {"chat_path": attrs.field(default="/chat/completions", type=str)},
)
#: A model's ``options``: a preset and dialect overrides over its provider's dialect.
OpenAIChatModelOptions: Any = _options_class(
    "OpenAIChatModelOptions",
    "Per-model options of an ``openai-chat`` model: dialect overrides over the provider's.",
    {},
)


def dialect_of(options: Any, base: OpenAIDialect, where: str,
               context: BackendContext) -> OpenAIDialect | None:
    """The dialect ``options`` select: their preset (or ``base``) with their overrides."""
    preset = options.dialect
    if preset is not None:
        if preset not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            context.problem(f"{where}.dialect", f"unknown dialect {preset!r} (one of {known})")
            return None
        base = PRESETS[preset]
    overrides = {name: value for name in _DIALECT_FIELDS
                 if (value := getattr(options, name)) is not None}
    try:
        return attrs.evolve(base, **overrides)
    except (TypeError, ValueError) as e:
        context.problem(where, str(e))
        return None


@attrs.frozen
class ChatCall:
    """One Chat Completions request and what its answers are read with."""

    request: UpstreamRequest
    requested_model: str
    upstream_model: str
    upstream_name: str
    dialect: OpenAIDialect
    tool_names: ToolNameMap
    input_tokens: int
    stop_sequences: list[str] | None

    def translator(self) -> StreamTranslator:
        """A :class:`ChatStreamTranslator` for this request."""
        return ChatStreamTranslator(
            model=self.requested_model, input_tokens=self.input_tokens, dialect=self.dialect,
            stop_sequences=self.stop_sequences, tool_names=self.tool_names,
            message_id=message_id(), upstream_name=self.upstream_name,
        )

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> RelayError:
        """The mapped upstream error (mapping.md §11)."""
        return upstream_error(status, body, headers, upstream_name=self.upstream_name,
                              upstream_model=self.upstream_model)

    def response_events(self, body: bytes) -> list[Event]:
        """Events of a non-streaming Chat Completions answer."""
        raw = body.strip()  # Q16: leading whitespace while queued
        if not raw:
            raise self.error(200, b"", {})
        try:
            decoded = loads(raw)
        except JSONDecodeError:
            raise RelayError("api_error", f"{self.upstream_name}: upstream answered with "
                             "something that is not JSON", status=502) from None
        if not isinstance(decoded, dict):
            raise RelayError("api_error", f"{self.upstream_name}: unexpected upstream answer",
                             status=502)
        return chat_response_events(
            decoded, model=self.requested_model, input_tokens=self.input_tokens,
            dialect=self.dialect, stop_sequences=self.stop_sequences,
            tool_names=self.tool_names, message_id=message_id(),
            upstream_name=self.upstream_name,
        )


@attrs.frozen
class OpenAIChatCodec:
    """Builds Chat Completions calls with the provider's (or a model's) dialect."""

    upstream_name: str
    dialect: OpenAIDialect
    #: Per-model dialects, for models whose ``options`` override the provider's.
    model_dialects: Mapping[str, OpenAIDialect] = attrs.Factory(dict)
    chat_path: str = "/chat/completions"

    def dialect_for(self, route: Route) -> OpenAIDialect:
        """The routed model's dialect."""
        if route.model is not None:
            return self.model_dialects.get(route.model.id, self.dialect)
        return self.dialect

    def prepare(self, request: MessagesRequest, route: Route, input_tokens: int) -> ChatCall:
        """The call for one routed request."""
        caps = capabilities_of(route)
        dialect = self.dialect_for(route)
        if not caps.reasoning_passback and dialect.reasoning_input is not None:
            # Thinking from the history is not sent back (DeepSeek's required empty
            # reasoning_content on tool calls still is).
            dialect = attrs.evolve(dialect, reasoning_input=None)
        names = ToolNameMap.from_request(request)
        body = build_chat_request(
            request,
            upstream_model=route.upstream_model,
            dialect=dialect,
            max_output_tokens=caps.max_output_tokens,
            stream=request.stream,
            tool_names=names,
            context_window=caps.context_window,
            prompt_tokens=input_tokens,
        )
        return ChatCall(
            UpstreamRequest(self.chat_path, dumps(body), stream=bool(request.stream)),
            route.requested, route.upstream_model, self.upstream_name, dialect, names,
            input_tokens, request.stop_sequences,
        )


def build_openai_backend(options: Any, context: BackendContext) -> HTTPBackend | None:
    """The backend of an ``openai-chat`` provider; problems go to ``context``."""
    dialect = dialect_of(options, PRESETS["generic"], "options", context)
    if not options.chat_path.startswith("/"):
        context.problem("options.chat_path", "must be a path starting with /")
        return None
    model_dialects: dict[str, OpenAIDialect] = {}
    if dialect is not None:
        for model_id, model_options in context.model_options.items():
            where = f"{context.model_where.get(model_id, 'models')}.options"
            md = dialect_of(model_options, dialect, where, context)
            if md is not None:
                model_dialects[model_id] = md
    if dialect is None:
        return None
    api_key = context.provider.api_key.value if context.provider.api_key is not None else ""
    codec = OpenAIChatCodec(context.provider.name, dialect, model_dialects, options.chat_path)
    return http_backend(context, codec, BearerAuth(api_key, KeyPool.of(context.provider)))
