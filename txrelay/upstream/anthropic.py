# -*- test-case-name: tests.integration.test_anthropic_backend -*-
"""
The ``anthropic`` backend kind: pass-through to an Anthropic-API upstream (mapping.md §13).

Two transports of the same kind:

- ``api = "anthropic"``: the Anthropic API or any Anthropic-compatible gateway at
  ``base_url`` (``POST {base_url}/v1/messages``, ``/v1/messages/count_tokens``,
  ``GET /v1/models``), the provider's key as ``x-api-key`` (or ``authorization: Bearer``);
- ``api = "vertex"``: Claude on Vertex AI (``…/publishers/anthropic/models/{model}:
  streamRawPredict`` / ``:rawPredict``; the model in the URL, ``anthropic_version`` in the
  body), with any :class:`~txrelay.upstream.codec.UpstreamAuth` for the OAuth token.

The client's ``anthropic-version`` and ``anthropic-beta`` (filtered by the provider's
policy) go upstream with the body; the client's credentials never do. Streams are relayed
with backpressure through :class:`~txrelay.upstream.streaming.UpstreamSource`, the SSE
frames passing through byte for byte (:mod:`txrelay.protocol.passthrough`); upstream errors
come back as they were sent.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from zope.interface import implementer

from txrelay import __version__
from txrelay.interfaces import BackendContext, IBackend
from txrelay.logs import RelayLogger
from txrelay.pipeline import Exchange, Reply
from txrelay.protocol.errors import STATUS_FOR_TYPE, RelayError
from txrelay.protocol.jsoncodec import JSONDecodeError, loads
from txrelay.protocol.passthrough import (
    BetaPolicy,
    PassThroughTranslator,
    forwarded_headers,
    message_events,
    request_bytes,
    response_body,
    upstream_error,
)
from txrelay.routing.keys import KeyPool
from txrelay.streams import EventStream, stream_of
from txrelay.upstream.codec import BearerAuth, UpstreamAuth
from txrelay.upstream.http import UpstreamClient, read_body, response_headers
from txrelay.upstream.streaming import UpstreamSource
from txrelay.upstream.vertex_auth import DEFAULT_MARGIN, CredentialFileError, vertex_auth

log = RelayLogger()

_MAX_ERROR_BODY = 1 << 20
#: The ``anthropic_version`` Vertex AI expects in the body.
VERTEX_VERSION = "vertex-2023-10-16"
_AUTH_STYLES = ("x-api-key", "bearer")


@attrs.frozen
class AnthropicOptions:
    """Options of an ``anthropic`` provider."""

    #: ``anthropic`` (the Anthropic API or a compatible gateway) or ``vertex``.
    api: str = "anthropic"
    #: How the provider's ``api_key`` is sent: ``x-api-key`` or ``bearer``.
    auth: str = "x-api-key"
    #: ``anthropic-beta`` values never sent to this upstream.
    strip_betas: tuple[str, ...] = ()
    #: beta → the beta sent instead (``""`` strips it).
    rewrite_betas: dict[str, str] = attrs.Factory(dict)
    #: Request body fields (top-level, or dotted paths) this upstream rejects.
    strip_fields: tuple[str, ...] = ()
    #: Serve ``GET /v1/models`` from the upstream instead of the catalog.
    models_from_upstream: bool = False
    #: The ``anthropic-version`` sent when the client sent none.
    default_version: str = "2023-06-01"
    #: Vertex AI: the Google Cloud project and location (``us-east5``, ``global``…).
    project: str | None = None
    location: str | None = None
    #: Vertex AI: the body's ``anthropic_version``.
    vertex_version: str = VERTEX_VERSION
    #: Vertex AI: a service-account key file; without it (and without ``api_key``),
    #: Application Default Credentials. Tokens come from ``txrelay.upstream.vertex_auth``.
    credentials_file: str | None = None
    #: Vertex AI: seconds before expiry the access token is replaced.
    token_refresh_margin: float = DEFAULT_MARGIN


@attrs.frozen
class ApiKeyAuth:
    """The provider's key as ``x-api-key`` (Anthropic's own header)."""

    key: str = attrs.field(default="", repr=False)
    #: The provider's ``api_keys``: the attempt's key is sent instead of ``key``.
    pool: KeyPool | None = None

    async def headers(self) -> Mapping[str, str]:
        """``{"x-api-key": key}`` (none when empty)."""
        key = self.pool.current() if self.pool is not None else self.key
        return {"x-api-key": key} if key else {}


@attrs.frozen
class Transport:
    """Where one kind of Anthropic upstream takes each operation (sans-IO)."""

    base_url: str
    #: Vertex AI: ``projects/{p}/locations/{l}/publishers/anthropic/models`` under base_url.
    vertex_models: str | None = None
    vertex_version: str = VERTEX_VERSION

    @property
    def vertex(self) -> bool:
        """Whether this is Claude on Vertex AI."""
        return self.vertex_models is not None

    def messages_url(self, model: str, stream: bool, query: Mapping[str, str]) -> str:
        """The URL of a messages call."""
        if self.vertex_models is not None:
            verb = "streamRawPredict" if stream else "rawPredict"
            quoted = urllib.parse.quote(model, safe="@")  # Vertex ids pin versions: x@2025…
            return f"{self.base_url}/{self.vertex_models}/{quoted}:{verb}"
        return self.base_url + "/v1/messages" + _query(query)

    def count_tokens_url(self, query: Mapping[str, str]) -> str:
        """The URL of a count_tokens call."""
        if self.vertex_models is not None:
            return f"{self.base_url}/{self.vertex_models}/count-tokens:rawPredict"
        return self.base_url + "/v1/messages/count_tokens" + _query(query)

    def body_edits(self, model: str, *, count: bool) -> tuple[str | None, dict[str, Any]]:
        """The model to put in the body (None: remove it) and fields to set."""
        if self.vertex_models is None:
            return model, {}
        # Vertex: the model is in the URL, except for count-tokens, which takes it in the body.
        return (model if count else None), {"anthropic_version": self.vertex_version}


def _query(query: Mapping[str, str]) -> str:
    return "?" + urllib.parse.urlencode(dict(query)) if query else ""


def vertex_base_url(location: str) -> str:
    """The Vertex AI endpoint of ``location`` (``global`` has no regional host)."""
    if location == "global":
        return "https://aiplatform.googleapis.com/v1"
    return f"https://{location}-aiplatform.googleapis.com/v1"


@attrs.define(eq=False)
class _Answer:
    """What the streaming call learnt of the upstream's answer, for the reply."""

    headers: list[tuple[str, str]] = attrs.Factory(list)


@implementer(IBackend)
@attrs.define(eq=False)
class AnthropicBackend:
    """Serves one provider by passing requests through to an Anthropic-API upstream."""

    name: str
    reactor: Any
    client: UpstreamClient
    transport: Transport
    auth: UpstreamAuth
    options: AnthropicOptions
    idle_timeout: float
    provider_headers: Mapping[str, str] = attrs.Factory(dict)
    #: Commit a stream after this long even without upstream content (pings start).
    commit_after: float = 10.0
    betas: BetaPolicy = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.betas = BetaPolicy(frozenset(self.options.strip_betas),
                                dict(self.options.rewrite_betas))

    # what goes upstream

    async def _headers(self, exchange: Exchange, *, stream: bool) -> dict[str, str]:
        """Our headers: never the client's credentials, only its version and betas."""
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": f"txrelay/{__version__}",
        }
        if not self.transport.vertex:
            headers["anthropic-version"] = (exchange.headers.get("anthropic-version")
                                            or self.options.default_version)
        betas = self.betas.apply(exchange.headers.get("anthropic-beta"))
        if betas:
            headers["anthropic-beta"] = betas
        try:
            credentials = await self.auth.headers()
        except (RelayError, CancelledError):
            raise
        except Exception:
            log.failure("upstream {provider}: the credential hook failed", provider=self.name)
            raise RelayError("api_error", f"{self.name}: could not obtain the upstream "
                             "credential", status=502) from None
        headers.update({k.lower(): v for k, v in credentials.items()})
        headers.update({k.lower(): v for k, v in self.provider_headers.items()})
        return headers

    def _body(self, exchange: Exchange, *, count: bool) -> bytes:
        route = exchange.route
        assert route is not None
        exchange.require_request()  # validated (a 400 naming the path otherwise)
        model, fields = self.transport.body_edits(route.upstream_model, count=count)
        ceiling = route.model.max_tokens if route.model is not None and not count else None
        return request_bytes(exchange.raw_body, model=model,
                             strip_fields=self.options.strip_fields, set_fields=fields,
                             max_tokens=ceiling)

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> RelayError:
        error = upstream_error(status, body, headers, upstream_name=self.name)
        log.info("upstream {provider} answered {status} {type} (upstream request-id "
                 "{upstream_request_id})", provider=self.name, status=status, type=error.type,
                 upstream_request_id=headers.get("request-id"))
        return error

    # IBackend

    async def messages(self, exchange: Exchange) -> Reply:
        """Serve ``POST /v1/messages`` (see :class:`~txrelay.interfaces.IBackend`)."""
        req = exchange.require_request()
        route = exchange.route
        assert route is not None
        body = self._body(exchange, count=False)
        headers = await self._headers(exchange, stream=req.stream)
        url = self.transport.messages_url(route.upstream_model, req.stream, exchange.query)
        log.debug("upstream {provider} request {request_id}: {size} bytes, model {model}",
                  provider=self.name, request_id=exchange.request_id, size=len(body),
                  model=route.upstream_model)
        if req.stream:
            return await self._streaming(route.requested, url, body, headers)
        response = await self.client.post(url, body, headers)
        hdrs = response_headers(response)
        raw = await read_body(response, idle=self.idle_timeout, reactor=self.reactor)
        if not 200 <= response.code < 300:
            raise self._error(response.code, raw, hdrs)
        message = response_body(raw, model=route.requested, upstream_name=self.name)
        # As events, so stage filters apply; the resource folds them back into the message.
        return Reply(stream=stream_of(message_events(message)),
                     headers=forwarded_headers(hdrs))

    async def _streaming(self, model: str, url: str, body: bytes,
                         headers: Mapping[str, str]) -> Reply:
        translator = PassThroughTranslator(model=model, upstream_name=self.name)
        source = UpstreamSource(translator, self.reactor, self.idle_timeout, self.commit_after)
        answer = _Answer()
        source.begin(Deferred.fromCoroutine(self._open(source, url, body, headers, answer)))
        try:
            await source.ready
        except CancelledError:
            source.stop()
            raise
        return Reply(stream=EventStream(source), headers=answer.headers)

    async def _open(self, source: UpstreamSource, url: str, body: bytes,
                    headers: Mapping[str, str], answer: _Answer) -> None:
        """Send the request and hand its answer to ``source`` (a cancel just returns)."""
        try:
            response = await self.client.post(url, body, headers)
            status, hdrs = response.code, response_headers(response)
            media = hdrs.get("content-type", "").split(";", 1)[0].strip().lower()
            if 200 <= status < 300 and media != "application/json":
                answer.headers = forwarded_headers(hdrs)
                source.bare_body = lambda raw: self._bare(status, raw, hdrs)
                source.response(response)
                return
            try:
                raw = await read_body(response, idle=self.idle_timeout, reactor=self.reactor,
                                      limit=_MAX_ERROR_BODY)
            except RelayError:
                raw = b""
            source.fail(self._bare(status, raw, hdrs) if status < 300
                        else self._error(status, raw, hdrs))
        except CancelledError:
            return
        except RelayError as e:
            source.fail(e)
        except Exception:
            log.failure("upstream {provider}: reading the answer failed", provider=self.name)
            source.fail(RelayError("api_error", f"{self.name}: the relay could not read the "
                                   "upstream's answer", status=502))

    def _bare(self, status: int, raw: bytes, headers: Mapping[str, str]) -> RelayError:
        """A 2xx that is not an event stream: an error object sent as 200, or nonsense."""
        try:
            decoded = loads(raw) if raw.strip() else None
        except (JSONDecodeError, ValueError):
            decoded = None
        if isinstance(decoded, dict) and decoded.get("type") == "error":
            error = self._error(502, raw, headers)
            return attrs.evolve(error, status=_status_of(error.type))
        what = "an empty body" if not raw.strip() else "something that is not an event stream"
        return RelayError("api_error", f"{self.name}: upstream answered HTTP {status} with "
                          f"{what}", status=502)

    async def count_tokens(self, exchange: Exchange) -> int:
        """The upstream's count (R-P6)."""
        body = self._body(exchange, count=True)
        headers = await self._headers(exchange, stream=False)
        response = await self.client.post(self.transport.count_tokens_url(exchange.query),
                                          body, headers)
        raw = await read_body(response, idle=self.idle_timeout, reactor=self.reactor)
        if not 200 <= response.code < 300:
            raise self._error(response.code, raw, response_headers(response))
        try:
            decoded = loads(raw)
        except (JSONDecodeError, ValueError):
            decoded = None
        tokens = decoded.get("input_tokens") if isinstance(decoded, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise RelayError("api_error", f"{self.name}: count_tokens answer without "
                             "input_tokens", status=502)
        return tokens

    #: ``max_tokens: 0`` goes upstream: it pre-warms Anthropic's prompt cache.
    serves_zero_max_tokens = True

    @property
    def serves_models(self) -> bool:
        """Whether ``GET /v1/models`` comes from this upstream."""
        return self.options.models_from_upstream and not self.transport.vertex

    async def models(self, exchange: Exchange) -> Reply:
        """``GET /v1/models`` or ``/v1/models/{id}`` from the upstream, as it answered."""
        path = "/v1/models"
        if exchange.operation == "models.get":
            assert exchange.model_id is not None
            path += "/" + urllib.parse.quote(exchange.model_id, safe="")
        url = self.transport.base_url + path + _query(exchange.query)
        headers = await self._headers(exchange, stream=False)
        headers.pop("content-type", None)
        response = await self.client.get(url, headers)
        raw = await read_body(response, idle=self.idle_timeout, reactor=self.reactor)
        hdrs = response_headers(response)
        if not 200 <= response.code < 300:
            raise self._error(response.code, raw, hdrs)
        try:
            decoded = loads(raw)
        except (JSONDecodeError, ValueError):
            raise RelayError("api_error", f"{self.name}: the models list is not JSON",
                             status=502) from None
        return Reply.json(decoded).with_headers(*forwarded_headers(hdrs))

    def close(self) -> Deferred[None] | None:
        """Close pooled upstream connections."""
        return self.client.close()


def _status_of(kind: str) -> int:
    return STATUS_FOR_TYPE.get(kind, 502)


def _vertex_auth(context: BackendContext, options: AnthropicOptions) -> UpstreamAuth | None:
    """
    The OAuth token source of a Vertex provider: a fixed access token in ``api_key`` (sent
    as a bearer token), else Google credentials (a service-account file or Application
    Default Credentials) refreshed off the reactor thread, shared with the gemini kind.
    """
    key = context.provider.api_key
    if key is not None:
        return BearerAuth(key.value)
    try:
        return vertex_auth(context.reactor, credentials_file=options.credentials_file,
                           margin=options.token_refresh_margin,
                           timeout=min(context.provider.timeouts.first_byte, 30.0),
                           label=context.provider.name)
    except CredentialFileError as e:
        context.problem("options.credentials_file" if options.credentials_file
                        else "options", str(e))
        return None


def build_anthropic_backend(options: AnthropicOptions, context: BackendContext,
                            auth: UpstreamAuth | None = None) -> AnthropicBackend | None:
    """The backend of an ``anthropic`` provider; problems go to ``context``."""
    provider = context.provider
    ok = True
    if options.auth not in _AUTH_STYLES:
        context.problem("options.auth", f"unknown auth {options.auth!r} (one of "
                        f"{', '.join(_AUTH_STYLES)})")
        ok = False
    if options.api == "anthropic":
        if provider.base_url is None:
            context.problem("base_url", "required for kind 'anthropic' "
                            "(https://api.anthropic.com for the Anthropic API)")
            return None
        transport = Transport(provider.base_url.rstrip("/"))
        if auth is None:
            key = provider.api_key.value if provider.api_key is not None else ""
            pool = KeyPool.of(provider)
            auth = BearerAuth(key, pool) if options.auth == "bearer" else ApiKeyAuth(key, pool)
    elif options.api == "vertex":
        if not options.project or not options.location:
            context.problem("options", "api = 'vertex' needs project and location")
            return None
        base = (provider.base_url or vertex_base_url(options.location)).rstrip("/")
        models = (f"projects/{options.project}/locations/{options.location}"
                  "/publishers/anthropic/models")
        transport = Transport(base, models, options.vertex_version)
        if options.models_from_upstream:
            context.problem("options.models_from_upstream", "Vertex AI has no models list")
            ok = False
        if auth is None:
            auth = _vertex_auth(context, options)
    else:
        context.problem("options.api", f"unknown api {options.api!r} (anthropic or vertex)")
        return None
    if not ok or auth is None:
        return None
    ping = context.config.server.ping_interval if context.config is not None else 10.0
    return AnthropicBackend(
        provider.name, context.reactor, UpstreamClient(context.reactor, provider), transport,
        auth, options, provider.timeouts.idle, dict(provider.headers), commit_after=ping)
