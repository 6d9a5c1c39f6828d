# -*- test-case-name: tests.integration.test_gemini_backend -*-
"""
The ``gemini`` backend kind: Google Gemini through AI Studio or Vertex AI.

Both front doors speak the same wire format; they differ in where a model lives and how the
relay authenticates:

- AI Studio (``api = "ai-studio"``): ``https://generativelanguage.googleapis.com/v1beta/
  models/{model}:streamGenerateContent?alt=sse`` (``:generateContent``, ``:countTokens``),
  the API key in the ``x-goog-api-key`` header — never in the URL, so it cannot reach an
  access log.
- Vertex AI (``api = "vertex"``): ``https://{location}-aiplatform.googleapis.com/v1/projects/
  {project}/locations/{location}/publishers/google/models/{model}:…`` (host
  ``aiplatform.googleapis.com`` for ``location = "global"``), with an OAuth access token from
  a service account or Application Default Credentials (:mod:`txrelay.upstream.vertex_auth`),
  or an API key without a project ("express mode").

The translation is the sans-IO :mod:`txrelay.protocol.gemini`; this module holds the codec
glue, the options, and :class:`GeminiBackend`, the generic
:class:`~txrelay.upstream.httpbackend.HTTPBackend` plus what Gemini needs on top: one retry
before anything is committed when Vertex rejects the access token (after a refresh), when
Gemini rejects a replayed thought signature (without signatures, R-G10.3), or when its whole
answer is a malformed function call (mapping.md §8.2); and ``count_tokens`` served by
``countTokens`` (R-C1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError, Deferred

from txrelay.catalog import Route
from txrelay.interfaces import BackendContext
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.anthropic import MessagesRequest
from txrelay.protocol.errors import RelayError
from txrelay.protocol.events import Event
from txrelay.protocol.gemini import (
    GeminiStreamTranslator,
    GeminiToolNames,
    build_count_tokens_request,
    build_generate_request,
    count_tokens_result,
    gemini_error,
    gemini_response_events,
    is_signature_rejection,
    parse_gemini_response,
)
from txrelay.protocol.gemini.request import ThinkingStyle
from txrelay.protocol.ids import message_id
from txrelay.protocol.jsoncodec import dumps
from txrelay.protocol.tokens import estimate_input_tokens
from txrelay.protocol.translator import StreamTranslator
from txrelay.routing.keys import KeyPool
from txrelay.upstream.codec import UpstreamAuth, UpstreamCall, UpstreamRequest
from txrelay.upstream.http import read_body, response_headers
from txrelay.upstream.httpbackend import HTTPBackend, prompt_too_long
from txrelay.upstream.streaming import UpstreamSource
from txrelay.upstream.vertex_auth import DEFAULT_MARGIN, CredentialFileError, vertex_auth

log = RelayLogger()

AI_STUDIO_URL = "https://generativelanguage.googleapis.com"
VERTEX_GLOBAL_HOST = "aiplatform.googleapis.com"
#: The API versions used when ``base_url`` is not given (gemini.md §1).
DEFAULT_VERSIONS = {"ai-studio": "v1beta", "vertex": "v1"}
_MAX_BODY = 1 << 20
_LOCATION = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$|^[a-z0-9.:-]{1,100}$")
#: A model id or resource path: segments of safe characters, no dot segments.
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*(/[A-Za-z0-9][A-Za-z0-9._@-]*)*$")
_THINKING_STYLES = ("budget", "level", "none")
_RETRY_REASONS = {
    "credential": "the access token was rejected",
    "signature": "Gemini rejected a replayed thought signature",
    "malformed": "Gemini produced a malformed function call and nothing else",
    "": "retrying",
}

Api = Literal["ai-studio", "vertex"]


@attrs.frozen
class SafetySetting:
    """One ``safetySettings`` entry (gemini.md §2.6)."""

    category: str
    threshold: str


@attrs.frozen
class GeminiOptions:
    """A ``gemini`` provider's ``options``."""

    #: Which front door: ``"ai-studio"`` (API key) or ``"vertex"`` (OAuth, or an API key).
    api: str = "ai-studio"
    #: Vertex: the Google Cloud project id (omit with an API key for express mode).
    project: str | None = None
    #: Vertex: the region (``us-central1``, ``europe-west4``) or ``global``.
    location: str = "global"
    #: The API version in the default URL (``v1beta`` on AI Studio, ``v1`` on Vertex).
    api_version: str | None = None
    #: Vertex: a service-account JSON key; without it, Application Default Credentials.
    credentials_file: str | None = None
    #: Vertex: refresh the access token this many seconds before it expires.
    token_refresh_margin: float = DEFAULT_MARGIN
    #: Vertex: the quota/billing project sent as ``x-goog-user-project``.
    quota_project: str | None = None
    #: Sent as ``safetySettings`` on every request (e.g. ``BLOCK_NONE`` for coding agents).
    safety_settings: tuple[SafetySetting, ...] = ()
    #: Thinking controls for every model: ``level`` (Gemini 3), ``budget`` (2.5), ``none``;
    #: by default each model's is told from its name.
    thinking_style: str | None = None


@attrs.frozen
class GeminiModelOptions:
    """A ``gemini`` model's ``options`` (over the provider's)."""

    thinking_style: str | None = None
    safety_settings: tuple[SafetySetting, ...] | None = None


@attrs.frozen
class ModelSettings:
    """What one model's requests are built with."""

    thinking_style: ThinkingStyle | None = None
    safety_settings: tuple[SafetySetting, ...] = ()


@attrs.define(eq=False)
class GeminiCall:
    """One Gemini request, what its answers are read with, and why it may be retried."""

    request: UpstreamRequest
    requested_model: str
    upstream_model: str
    upstream_name: str
    tool_names: GeminiToolNames
    signature_scope: str
    input_tokens: int
    #: Whether this is a first attempt, which a retry may follow.
    may_retry: bool = True
    #: Why a fresh attempt may succeed: ``"credential"`` (HTTP 401), ``"signature"`` (a
    #: replayed thought signature rejected), ``"malformed"`` (Gemini produced a malformed
    #: function call and nothing else, mapping.md §8.2).
    retry_reason: str | None = None

    def _translator(self) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(
            model=self.requested_model, input_tokens=self.input_tokens,
            tool_names=self.tool_names, message_id=message_id(),
            upstream_name=self.upstream_name, upstream_model=self.upstream_model,
            signature_scope=self.signature_scope,
        )

    def translator(self) -> StreamTranslator:
        """A :class:`GeminiStreamTranslator` for this request (guarded for a retry)."""
        translator = self._translator()
        return _MalformedGuard(translator, self) if self.may_retry else translator

    def malformed(self) -> RelayError:
        """Note that a retry may help; the error ending this attempt (never seen by a client
        unless it already got the answer's start)."""
        self.retry_reason = "malformed"
        return RelayError("api_error", f"{self.upstream_name}: Gemini produced a malformed "
                          "function call", status=502)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> RelayError:
        """The mapped Gemini error (mapping.md §11.3); notes whether a retry may help."""
        if status == 401:
            self.retry_reason = "credential"
        elif is_signature_rejection(status, body):
            self.retry_reason = "signature"
        if 200 <= status < 300:
            if not body.strip():
                return RelayError("api_error", f"{self.upstream_name}: the upstream answered "
                                  "with an empty body", status=502)
            # A bare JSON body where an event stream was asked for: an error, or nonsense.
            try:
                decoded = parse_gemini_response(body, upstream_name=self.upstream_name)
            except RelayError as e:
                return attrs.evolve(e, status=502)
            first = decoded[0] if isinstance(decoded, list) and decoded else decoded
            if isinstance(first, dict) and "error" in first:
                return gemini_error(status, body, headers, upstream_name=self.upstream_name,
                                    upstream_model=self.upstream_model)
            return RelayError("api_error", f"{self.upstream_name}: the upstream answered with "
                              "JSON instead of an event stream", status=502)
        return gemini_error(status, body, headers, upstream_name=self.upstream_name,
                            upstream_model=self.upstream_model)

    def response_events(self, body: bytes) -> list[Event]:
        """Events of a non-streaming ``generateContent`` answer."""
        decoded = parse_gemini_response(body, upstream_name=self.upstream_name)
        if not self.may_retry:
            return gemini_response_events(
                decoded, model=self.requested_model, input_tokens=self.input_tokens,
                tool_names=self.tool_names, message_id=message_id(),
                upstream_name=self.upstream_name, upstream_model=self.upstream_model,
                signature_scope=self.signature_scope,
            )
        translator = self._translator()  # as gemini_response_events, with a look at the end
        translator.process_response(decoded)
        if translator.malformed_call:
            raise self.malformed()
        return translator.start(ping=False) + translator.finalize()


@attrs.define(eq=False)
class _MalformedGuard:
    """
    A Gemini stream translator that ends the first attempt with an error instead of the
    explanation text when Gemini produced only a malformed function call and nothing has
    been committed to the client yet, so :class:`GeminiBackend` can ask once more (§8.2).
    """

    inner: GeminiStreamTranslator
    call: GeminiCall
    #: Whether the client's response was committed (set by the backend once it has a source).
    committed: Callable[[], bool] = lambda: True
    _error: RelayError | None = None

    @property
    def done(self) -> bool:
        return self._error is not None or self.inner.done

    @property
    def finish_seen(self) -> bool:
        return self.inner.finish_seen

    @property
    def error(self) -> RelayError | None:
        return self._error or self.inner.error

    def start(self) -> list[Event]:
        return self.inner.start()

    def feed(self, data: bytes) -> list[Event]:
        if self._error is not None:
            return []
        events = self.inner.feed(data)
        return self._retry_events() or events

    def finish(self) -> list[Event]:
        if self._error is not None:
            return []
        # Checked before the translator adds its explanation (which counts as content).
        return self._retry_events() or self.inner.finish()

    def _retry_events(self) -> list[Event]:
        if self._error is None and self.inner.malformed_call and not self.committed():
            self._error = self.call.malformed()
            return [self._error.event()]
        return []


@attrs.frozen
class GeminiCodec:
    """Builds Gemini calls: the URL path of the model's method and the translated body."""

    upstream_name: str
    api: Api
    #: Vertex: ``projects/{p}/locations/{l}``, or "" for express mode.
    vertex_parent: str = ""
    default_settings: ModelSettings = ModelSettings()
    #: Per-model settings, for models whose ``options`` say more than the provider's.
    model_settings: Mapping[str, ModelSettings] = attrs.Factory(dict)

    def settings_for(self, route: Route) -> ModelSettings:
        """The routed model's settings."""
        if route.model is not None:
            return self.model_settings.get(route.model.id, self.default_settings)
        return self.default_settings

    def model_path(self, upstream_model: str) -> str:
        """The model's resource path, quoted; a name that cannot be one is a 400."""
        if not _MODEL.match(upstream_model) or len(upstream_model) > 256:
            raise RelayError("invalid_request_error",
                             f"model: {upstream_model!r} is not a valid Gemini model id")
        model = quote(upstream_model, safe="/@")
        if self.api == "ai-studio":
            return model if "/" in model else f"models/{model}"
        if model.startswith("projects/"):
            return model
        if not model.startswith("publishers/"):
            model = f"publishers/google/models/{model}"
        return f"{self.vertex_parent}/{model}" if self.vertex_parent else model

    def path(self, upstream_model: str, method: str) -> str:
        """``/…/models/{model}:{method}``, appended to the base URL."""
        suffix = "?alt=sse" if method == "streamGenerateContent" else ""
        return f"/{self.model_path(upstream_model)}:{method}{suffix}"

    def scope(self, route: Route) -> str:
        """What thought signatures are bound to: this provider and model (R-G10)."""
        return f"{self.upstream_name}:{route.upstream_model}"

    def prepare(self, request: MessagesRequest, route: Route, input_tokens: int, *,
                replay_signatures: bool = True, may_retry: bool = False) -> GeminiCall:
        """
        The call for one routed request (``replay_signatures=False``: the R-G10.3 retry;
        ``may_retry``: a first attempt, whose malformed-call answer may be asked again).
        """
        model = route.model
        settings = self.settings_for(route)
        names = GeminiToolNames.from_request(request)
        scope = self.scope(route)
        body = build_generate_request(
            request,
            upstream_model=route.upstream_model,
            max_output_tokens=model.max_tokens if model else None,
            tool_names=names,
            thinking_style=settings.thinking_style,
            signature_scope=scope,
            replay_signatures=replay_signatures,
            safety_settings=[attrs.asdict(s) for s in settings.safety_settings] or None,
        )
        stream = bool(request.stream)
        method = "streamGenerateContent" if stream else "generateContent"
        return GeminiCall(
            UpstreamRequest(self.path(route.upstream_model, method), dumps(body), stream=stream),
            route.requested, route.upstream_model, self.upstream_name, names, scope,
            input_tokens, may_retry,
        )

    def prepare_count(self, request: MessagesRequest, route: Route) -> GeminiCall:
        """The ``countTokens`` call for a request (R-C1)."""
        names = GeminiToolNames.from_request(request)
        scope = self.scope(route)
        body = build_count_tokens_request(
            request, upstream_model=route.upstream_model, vertex=self.api == "vertex",
            tool_names=names, signature_scope=scope,
        )
        return GeminiCall(
            UpstreamRequest(self.path(route.upstream_model, "countTokens"), dumps(body),
                            stream=False),
            route.requested, route.upstream_model, self.upstream_name, names, scope, 0,
        )


@attrs.define(eq=False)
class ApiKeyAuth:
    """A Google API key in the ``x-goog-api-key`` header (never in the URL)."""

    key: str = attrs.field(repr=False)
    #: The provider's ``api_keys``: the attempt's key is sent instead of ``key``.
    pool: KeyPool | None = None

    async def headers(self) -> Mapping[str, str]:
        """``{"x-goog-api-key": key}``."""
        return {"x-goog-api-key": self.pool.current() if self.pool is not None else self.key}


@attrs.define(eq=False)
class GeminiBackend(HTTPBackend):
    """The generic HTTP backend with Gemini's retries and ``countTokens``."""

    @property
    def gemini(self) -> GeminiCodec:
        """The codec, with its Gemini-only methods."""
        assert isinstance(self.codec, GeminiCodec)
        return self.codec

    def _rejected(self, call: GeminiCall, headers: Mapping[str, str]) -> bool:
        """Whether ``call``'s failure is worth one more attempt (and prepare for it)."""
        if call.retry_reason == "credential":
            rejected = getattr(self.auth, "rejected", None)
            return bool(rejected is not None and rejected(headers))
        return call.retry_reason in ("signature", "malformed")

    def close(self) -> Deferred[None] | None:
        """Close pooled upstream connections and the token endpoint's."""
        close_auth = getattr(self.auth, "close", None)
        if close_auth is not None:
            close_auth()
        return super().close()

    async def _open_stream(self, source: UpstreamSource, call: UpstreamCall, url: str,
                           headers: Mapping[str, str]) -> None:
        if isinstance(source.translator, _MalformedGuard):
            source.translator.committed = lambda: source.ready.called
        await super()._open_stream(source, call, url, headers)

    async def messages(self, exchange: Exchange) -> Reply:
        """Serve a routed ``messages`` exchange, retrying once before the commit."""
        req = exchange.require_request()
        route = exchange.route
        assert route is not None
        input_tokens = estimate_input_tokens(req)
        limit = route.model.max_input_tokens if route.model is not None else None
        if limit is not None and input_tokens > limit:
            raise prompt_too_long(input_tokens, limit)
        replay = True
        for attempt in (1, 2):
            call = self.gemini.prepare(req, route, input_tokens, replay_signatures=replay,
                                       may_retry=attempt == 1)
            headers = await self._headers(call)
            url = self.base_url + call.request.path
            log.debug("upstream {provider} request {request_id}: {size} bytes, model {model}",
                      provider=self.provider.name, request_id=exchange.request_id,
                      size=len(call.request.body), model=route.upstream_model)
            try:
                if call.request.stream:
                    return await self._streaming(call, url, headers)
                return await self._non_streaming(call, url, headers)
            except RelayError:
                if attempt == 2 or not self._rejected(call, headers):
                    raise
            if call.retry_reason == "signature":
                replay = False
            log.info("upstream {provider} request {request_id}: {what}; trying once more",
                     provider=self.provider.name, request_id=exchange.request_id,
                     what=_RETRY_REASONS[call.retry_reason or ""])
        raise AssertionError("unreachable")

    async def count_tokens(self, exchange: Exchange) -> int:
        """``countTokens`` (R-C1); the local estimate when Gemini is busy or unreachable."""
        req = exchange.require_request()
        route = exchange.route
        assert route is not None
        try:
            return await self._count(req, route)
        except CancelledError:
            raise
        except RelayError as e:
            if e.type not in ("rate_limit_error", "overloaded_error", "api_error",
                              "timeout_error"):
                raise
            log.info("upstream {provider}: countTokens failed ({message}); answering with "
                     "the local estimate", provider=self.provider.name, message=e.message)
            return estimate_input_tokens(req)

    async def _count(self, req: MessagesRequest, route: Route) -> int:
        for attempt in (1, 2):
            call = self.gemini.prepare_count(req, route)
            headers = await self._headers(call)
            response = await self.client.post(self.base_url + call.request.path,
                                              call.request.body, headers)
            raw = await read_body(response, idle=self.provider.timeouts.idle,
                                  reactor=self.reactor, limit=_MAX_BODY)
            if 200 <= response.code < 300:
                return count_tokens_result(raw, upstream_name=self.provider.name)
            error = call.error(response.code, raw, response_headers(response))
            if attempt == 2 or call.retry_reason != "credential" or \
                    not self._rejected(call, headers):
                raise error
        raise AssertionError("unreachable")


def _base_url(options: GeminiOptions, context: BackendContext) -> str:
    if context.provider.base_url is not None:
        return context.provider.base_url.rstrip("/")
    version = options.api_version or DEFAULT_VERSIONS[options.api]
    if options.api == "ai-studio":
        return f"{AI_STUDIO_URL}/{version}"
    host = VERTEX_GLOBAL_HOST if options.location == "global" or not options.project \
        else f"{options.location}-{VERTEX_GLOBAL_HOST}"
    return f"https://{host}/{version}"


def _thinking_style(value: str | None, where: str,
                    context: BackendContext) -> tuple[bool, ThinkingStyle | None]:
    if value is None:
        return True, None
    if value not in _THINKING_STYLES:
        context.problem(where, f"unknown thinking style {value!r} (one of "
                        f"{', '.join(_THINKING_STYLES)})")
        return False, None
    return True, value  # type: ignore[return-value]


def build_gemini_backend(options: GeminiOptions, context: BackendContext) -> GeminiBackend | None:
    """The backend of a ``gemini`` provider; problems go to ``context``."""
    provider = context.provider
    ok = True
    if options.api not in DEFAULT_VERSIONS:
        context.problem("options.api", f"unknown api {options.api!r} (\"ai-studio\" or "
                        "\"vertex\")")
        return None
    api: Api = "vertex" if options.api == "vertex" else "ai-studio"
    api_key = provider.api_key.value if provider.api_key is not None else ""
    if options.api_version is not None and not re.match(r"^v\d+[a-z0-9]*$",
                                                       options.api_version):
        context.problem("options.api_version", "expected a version such as v1 or v1beta")
        ok = False
    if options.token_refresh_margin < 0:
        context.problem("options.token_refresh_margin", "must not be negative")
        ok = False
    vertex_parent = ""
    if api == "ai-studio":
        if not api_key:
            context.problem("api_key", "required for api = \"ai-studio\" (sent as "
                            "x-goog-api-key)")
            ok = False
        for field in ("project", "credentials_file", "quota_project"):
            if getattr(options, field) is not None:
                context.problem(f"options.{field}", "only for api = \"vertex\"")
                ok = False
    else:
        if not _LOCATION.match(options.location):
            context.problem("options.location", f"{options.location!r} is not a Google Cloud "
                            "location (us-central1, europe-west4, global, …)")
            ok = False
        if options.project is not None:
            if not _PROJECT.match(options.project):
                context.problem("options.project", f"{options.project!r} is not a Google "
                                "Cloud project id")
                ok = False
            vertex_parent = f"projects/{options.project}/locations/{options.location}"
        elif not api_key:
            context.problem("options.project", "required for api = \"vertex\" (or an api_key "
                            "for Vertex AI express mode)")
            ok = False
        if api_key and options.credentials_file is not None:
            context.problem("options.credentials_file", "give either api_key (express mode) "
                            "or credentials_file, not both")
            ok = False
    styled, style = _thinking_style(options.thinking_style, "options.thinking_style", context)
    ok = ok and styled
    default = ModelSettings(style, tuple(options.safety_settings))
    per_model: dict[str, ModelSettings] = {}
    for model_id, model_options in context.model_options.items():
        where = f"{context.model_where.get(model_id, 'models')}.options.thinking_style"
        styled, model_style = _thinking_style(model_options.thinking_style, where, context)
        ok = ok and styled
        safety = model_options.safety_settings
        per_model[model_id] = ModelSettings(
            model_style if model_style is not None else default.thinking_style,
            tuple(safety) if safety is not None else default.safety_settings)

    auth: UpstreamAuth
    if api == "vertex" and not api_key:
        try:
            auth = vertex_auth(context.reactor, credentials_file=options.credentials_file,
                               margin=options.token_refresh_margin,
                               timeout=min(provider.timeouts.first_byte, 30.0),
                               quota_project=options.quota_project, label=provider.name)
        except CredentialFileError as e:
            context.problem("options.credentials_file" if options.credentials_file
                            else "options", str(e))
            return None
    else:
        auth = ApiKeyAuth(api_key, KeyPool.of(provider))
    if not ok:
        return None
    codec = GeminiCodec(provider.name, api, vertex_parent, default, per_model)
    provider = attrs.evolve(provider, base_url=_base_url(options, context))
    ping = context.config.server.ping_interval if context.config is not None else 10.0
    return GeminiBackend(provider, context.reactor, codec, auth, commit_after=ping)
