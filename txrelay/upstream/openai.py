# -*- test-case-name: tests.integration.test_openai_backend -*-
"""
The ``openai-chat`` backend: any OpenAI-compatible Chat Completions server.

The request is translated by :mod:`txrelay.protocol.openai.request`, sent with treq
(unbuffered), and the response body is translated chunk by chunk by the sans-IO
:class:`~txrelay.protocol.openai.stream.ChatStreamTranslator` inside an
:class:`~txrelay.upstream.streaming.UpstreamSource`, which carries the client's backpressure
to the upstream socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from cattrs.errors import ClassValidationError
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from txrelay import __version__
from txrelay.config import ModelConfig, ProviderConfig, RelayConfig
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import RelayError
from txrelay.protocol.ids import message_id
from txrelay.protocol.jsoncodec import JSONDecodeError, dumps, loads
from txrelay.protocol.openai.dialect import PRESETS, OpenAIDialect
from txrelay.protocol.openai.errors import upstream_error
from txrelay.protocol.openai.request import ToolNameMap, build_chat_request
from txrelay.protocol.openai.response import chat_response_events
from txrelay.protocol.openai.stream import ChatStreamTranslator
from txrelay.protocol.structure import error_lines, make_converter
from txrelay.protocol.tokens import estimate_input_tokens
from txrelay.streams import EventStream, stream_of
from txrelay.upstream.http import UpstreamClient, read_body, response_headers, transport_error
from txrelay.upstream.streaming import UpstreamSource

log = RelayLogger()
_converter = make_converter(forbid_extra_keys=True)

#: Keys of a provider's (or model's) ``options`` that are not dialect fields.
_BACKEND_KEYS = ("dialect", "chat_path")


def dialect_from_options(
    options: Mapping[str, Any], where: str, problems: list[str],
    base: OpenAIDialect | None = None,
) -> OpenAIDialect | None:
    """
    The dialect an ``options`` table selects: a preset (``dialect = "deepseek"``) with field
    overrides, or overrides on ``base``.
    """
    opts = {k: v for k, v in options.items() if k not in _BACKEND_KEYS}
    preset = options.get("dialect")
    if preset is not None:
        if preset not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            problems.append(f"{where}.dialect: unknown dialect {preset!r} (one of {known})")
            return None
        base = PRESETS[preset]
    fields = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in attrs.asdict(base or PRESETS["generic"], recurse=False).items()
    }
    fields.update(opts)
    try:
        return _converter.structure(fields, OpenAIDialect)
    except (ClassValidationError, TypeError, ValueError) as e:
        for path, msg in error_lines(e):
            problems.append(f"{where}.{path}: {msg}" if path else f"{where}: {msg}")
        return None


@attrs.define(eq=False)
class OpenAIBackend:
    """Serves requests from one OpenAI-compatible provider."""

    provider: ProviderConfig
    reactor: Any
    dialect: OpenAIDialect
    #: Per-model dialects, for models whose ``options`` override the provider's.
    model_dialects: dict[str, OpenAIDialect]
    url: str
    commit_after: float
    client: UpstreamClient = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.client = UpstreamClient(self.reactor, self.provider)

    def _dialect(self, model: ModelConfig | None) -> OpenAIDialect:
        if model is not None:
            return self.model_dialects.get(model.id, self.dialect)
        return self.dialect

    def _headers(self, stream: bool) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": f"txrelay/{__version__}",
        }
        if self.provider.api_key is not None and self.provider.api_key.value:
            headers["authorization"] = f"Bearer {self.provider.api_key.value}"
        headers.update({k.lower(): v for k, v in self.provider.headers.items()})
        return headers

    async def count_tokens(self, exchange: Exchange) -> int:
        """A local estimate (R-C1): Chat Completions has no counting endpoint."""
        return estimate_input_tokens(exchange.require_request())

    async def messages(self, exchange: Exchange) -> Reply:
        req = exchange.require_request()
        route = exchange.route
        assert route is not None
        model = route.model
        dialect = self._dialect(model)
        names = ToolNameMap.from_request(req)
        input_tokens = estimate_input_tokens(req)
        body = build_chat_request(
            req,
            upstream_model=route.upstream_model,
            dialect=dialect,
            max_output_tokens=model.max_tokens if model else None,
            stream=req.stream,
            tool_names=names,
            context_window=model.max_input_tokens if model else None,
            prompt_tokens=input_tokens,
        )
        payload = dumps(body)
        log.debug("upstream {provider} request {request_id}: {size} bytes, model {model}",
                  provider=self.provider.name, request_id=exchange.request_id,
                  size=len(payload), model=route.upstream_model)
        if req.stream:
            translator = ChatStreamTranslator(
                model=route.requested, input_tokens=input_tokens, dialect=dialect,
                stop_sequences=req.stop_sequences, tool_names=names,
                message_id=message_id(), upstream_name=self.provider.name,
            )
            source = UpstreamSource(translator, self.reactor, self.provider.timeouts.idle,
                                    self.commit_after)
            self._send_streaming(source, payload, route.upstream_model)
            try:
                await source.ready
            except CancelledError:
                source.stop()
                raise
            return Reply(stream=EventStream(source))
        return await self._non_streaming(req.stream, payload, route.requested,
                                         route.upstream_model, input_tokens, dialect, names,
                                         req.stop_sequences)

    def _send_streaming(self, source: UpstreamSource, payload: bytes, upstream_model: str) -> None:
        d = self.client.post(self.url, payload, self._headers(True))
        source.begin(d)

        def on_response(response: Any) -> None:
            if 200 <= response.code < 300:
                source.response(response)
                return
            status, headers = response.code, response_headers(response)

            def failed(body: bytes) -> None:
                source.fail(upstream_error(status, body, headers,
                                           upstream_name=self.provider.name,
                                           upstream_model=upstream_model))

            Deferred.fromCoroutine(
                read_body(response, idle=self.provider.timeouts.idle, reactor=self.reactor,
                          limit=1 << 20)
            ).addCallbacks(failed, lambda _: failed(b""))

        def on_error(failure: Failure) -> None:
            source.fail(transport_error(failure, self.provider.name,
                                        self.provider.timeouts.first_byte))

        d.addCallbacks(on_response, on_error)

    async def _non_streaming(
        self, stream: bool, payload: bytes, requested: str, upstream_model: str,
        input_tokens: int, dialect: OpenAIDialect, names: ToolNameMap,
        stop_sequences: list[str] | None,
    ) -> Reply:
        try:
            response = await self.client.post(self.url, payload, self._headers(stream))
        except CancelledError:
            raise
        except Exception:
            raise transport_error(Failure(), self.provider.name,
                                  self.provider.timeouts.first_byte) from None
        headers = response_headers(response)
        raw = await read_body(response, idle=self.provider.timeouts.idle, reactor=self.reactor)
        if not 200 <= response.code < 300:
            raise upstream_error(response.code, raw, headers, upstream_name=self.provider.name,
                                 upstream_model=upstream_model)
        try:
            body = loads(raw.strip())  # Q16: leading whitespace while queued
        except JSONDecodeError:
            raise RelayError("api_error", f"{self.provider.name}: upstream answered with "
                             "something that is not JSON", status=502) from None
        if not isinstance(body, dict):
            raise RelayError("api_error", f"{self.provider.name}: unexpected upstream answer",
                             status=502)
        events = chat_response_events(
            body, model=requested, input_tokens=input_tokens, dialect=dialect,
            stop_sequences=stop_sequences, tool_names=names, message_id=message_id(),
            upstream_name=self.provider.name,
        )
        if events and events[-1]["type"] == "error":
            # Nothing is committed yet: the client gets a proper HTTP error.
            err = events[-1]["error"]
            raise RelayError(err.get("type", "api_error"), err.get("message", ""))
        return Reply(stream=stream_of(events))

    def close(self) -> Deferred[None] | None:
        """Close pooled upstream connections."""
        return self.client.close()


def build_openai_backend(
    provider: ProviderConfig, where: str, reactor: Any, problems: list[str],
    cfg: RelayConfig | None = None,
) -> OpenAIBackend | None:
    """The backend for an ``openai-chat`` provider; problems are appended to ``problems``."""
    dialect = dialect_from_options(provider.options, f"{where}.options", problems)
    chat_path = provider.options.get("chat_path", "/chat/completions")
    if not isinstance(chat_path, str) or not chat_path.startswith("/"):
        problems.append(f"{where}.options.chat_path: must be a path starting with /")
        chat_path = "/chat/completions"
    model_dialects: dict[str, OpenAIDialect] = {}
    if cfg is not None and dialect is not None:
        for i, m in enumerate(cfg.models):
            if m.provider == provider.name and m.options:
                md = dialect_from_options(m.options, f"models[{i}].options", problems, dialect)
                if md is not None:
                    model_dialects[m.id] = md
    if dialect is None or provider.base_url is None:
        return None
    ping = cfg.server.ping_interval if cfg is not None else 10.0
    return OpenAIBackend(provider, reactor, dialect, model_dialects,
                         provider.base_url.rstrip("/") + chat_path, commit_after=ping)
